#!/usr/bin/env bash
# Creates .venv (once) with exactly the versions in requirements.lock (hash-checked), labkit itself in editable mode,
# then fetches the offline data into the labkit cache. CPU machines get the lock's torch==2.13.0 (the CPU wheel); a
# machine whose python already has a CUDA torch keeps it: the venv then sees the system packages and the lock is
# installed without its torch line, so nothing replaces the machine's torch. `make lock` regenerates the lock.
#
# `setup.sh latest` (make test-latest) builds .venv-latest instead, with the newest releases pyproject.toml's ranges
# allow (torch stays the CPU wheel or the machine's CUDA torch), every time, and lists what is newer than the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MODE=${1:-locked}
case "$MODE" in
  locked) VENV=.venv ;;
  latest) VENV=.venv-latest ;;
  *) echo "setup.sh: unknown mode '$MODE'; expected 'locked' (default) or 'latest'" >&2; exit 2 ;;
esac
stamp=$VENV/.labkit-setup
LOCK=requirements.lock
if [ "$MODE" = locked ] && [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ] \
   && [ "$stamp" -nt "$LOCK" ] && [ "$stamp" -nt labkit/data/sources.py ] && [ "$stamp" -nt data/catalogue.toml ]; then
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
  # the lock without torch (a requirement and its hash lines end at the next unindented line)
  awk '/^[^ #]/ { skip = ($0 ~ /^torch==/) } !skip' "$LOCK" > "$VENV/requirements.txt"
  echo "torch==$cuda_torch" > "$VENV/constraints.txt"
else
  echo "setup: no CUDA torch here; installing the locked CPU build torch==2.13.0"
  [ -d "$VENV" ] || "$PY" -m venv "$VENV"
  cp "$LOCK" "$VENV/requirements.txt"
  cp constraints-cpu.txt "$VENV/constraints.txt"
fi
# Debian's Chromium for the browser test (tests/test_browser.py drives it with Playwright; no browser download).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing Debian's chromium for the browser test"
  { apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; } \
    || echo "setup: could not install chromium; the browser test will be skipped" >&2
fi
if [ "$MODE" = latest ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q --upgrade --upgrade-strategy eager -c "$VENV/constraints.txt" \
    -e ".[notebooks,data,dev]"
  "$VENV/bin/python" scripts/newer_than_lock.py "$LOCK"
else
  # --no-deps: the lock already lists every dependency, so pip installs those files and nothing else
  "$VENV/bin/python" -m pip install -q --require-hashes --no-deps -r "$VENV/requirements.txt"
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
fi
[ -n "$cuda_torch" ] || "$VENV/bin/python" -m pip check  # (a GPU machine's own packages are not ours to judge)
"$VENV/bin/python" -m ipykernel install --sys-prefix --name labkit --display-name "labkit" >/dev/null
"$VENV/bin/labkit" fetch
touch "$stamp"
