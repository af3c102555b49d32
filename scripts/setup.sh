#!/usr/bin/env bash
# Creates .venv (once) with labkit and everything its notebooks and tests need, then fetches the offline data
# into the labkit cache. CPU machines get torch==2.13.0 (CPU wheel); a machine whose python already has a CUDA
# torch keeps it: the venv then sees the system packages and pip is told not to replace torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
stamp=$VENV/.labkit-setup
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ] \
   && [ "$stamp" -nt labkit/data/sources.py ]; then
  exit 0
fi
cuda_torch=$("$PY" - <<'PY' 2>/dev/null || true
import torch
print(torch.__version__ if torch.version.cuda else "")
PY
)
if [ -n "$cuda_torch" ]; then
  echo "setup: keeping this machine's CUDA torch $cuda_torch"
  [ -d "$VENV" ] || "$PY" -m venv --system-site-packages "$VENV"
  echo "torch==$cuda_torch" > "$VENV/constraints.txt"
else
  echo "setup: no CUDA torch here; installing the CPU build torch==2.13.0"
  [ -d "$VENV" ] || "$PY" -m venv "$VENV"
  cp constraints-cpu.txt "$VENV/constraints.txt"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# Debian's Chromium for the browser test (tests/test_browser.py drives it with Playwright; no browser download).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing Debian's chromium for the browser test"
  { apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; } \
    || echo "setup: could not install chromium; the browser test will be skipped" >&2
fi
"$VENV/bin/python" -m pip install -q -c "$VENV/constraints.txt" -e ".[notebooks,data,dev]"
"$VENV/bin/python" -m ipykernel install --sys-prefix --name labkit --display-name "labkit" >/dev/null
"$VENV/bin/labkit" fetch
touch "$stamp"
