# The two commands of README.md: `make report` (regenerate the cpu-preset reports, and GateSkip's toy one) and
# `make test`.
# Each creates .venv on first use (scripts/setup.sh: exactly requirements.lock; CPU torch here, the machine's own CUDA
# torch on a GPU box). `make test-latest` runs the same tests on the newest releases pyproject.toml allows;
# `make lock` regenerates requirements.lock.
PY := .venv/bin/python

.PHONY: setup test report lab clean-cache screenshots lock test-latest test-families

setup:
	bash scripts/setup.sh

test: setup
	.venv/bin/ruff check .
	bash scripts/offline.sh $(PY) -m pytest

report: setup
	.venv/bin/labkit report --preset cpu
	.venv/bin/labkit report --preset toy gateskip

lab: setup
	.venv/bin/jupyter lab --notebook-dir=notebooks

clean-cache: setup
	.venv/bin/labkit cache clean

screenshots: setup  # refresh the committed browser screenshots in reports/browser/ (the tests write to a temp dir)
	LABKIT_SCREENSHOTS=reports/browser bash scripts/offline.sh $(PY) -m pytest tests/test_browser.py

lock:  # re-resolve pyproject.toml's ranges into requirements.lock (exact versions, sha256 hashes)
	bash scripts/lock.sh

test-latest:  # the same tests in .venv-latest, built with the newest releases the ranges allow, and every family
	bash scripts/setup.sh latest
	.venv-latest/bin/ruff check .
	bash scripts/offline.sh .venv-latest/bin/python -m pytest
	bash scripts/offline.sh .venv-latest/bin/python -m pytest -m families -rP tests/test_families.py

test-families: setup  # GateSkip on every decoder family of the installed transformers (tests/test_families.py)
	bash scripts/offline.sh $(PY) -m pytest -m families -rP tests/test_families.py
