# The two commands of README.md: `make report` (regenerate the cpu-preset reports) and `make test`.
# Each creates .venv on first use (scripts/setup.sh: CPU torch here, the machine's own CUDA torch on a GPU box).
PY := .venv/bin/python

.PHONY: setup test report lab clean-cache screenshots

setup:
	bash scripts/setup.sh

test: setup
	.venv/bin/ruff check .
	bash scripts/offline.sh $(PY) -m pytest

report: setup
	.venv/bin/labkit report --preset cpu

lab: setup
	.venv/bin/jupyter lab --notebook-dir=notebooks

clean-cache: setup
	.venv/bin/labkit cache clean

screenshots: setup  # refresh the committed browser screenshots in reports/browser/ (the tests write to a temp dir)
	LABKIT_SCREENSHOTS=reports/browser bash scripts/offline.sh $(PY) -m pytest tests/test_browser.py
