#!/usr/bin/env bash
# Regenerates requirements.lock (`make lock`): every package labkit, its notebooks and its tests need, at exact
# versions with sha256 hashes, resolved from pyproject.toml's ranges with torch held to the CPU build
# (constraints-cpu.txt). scripts/setup.sh installs exactly this file; `make test-latest` checks the newest releases.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
"$PY" -m venv "$tools/venv"
"$tools/venv/bin/python" -m pip install -q --upgrade "pip==26.3" "pip-tools==7.6.2"
"$tools/venv/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras --all-build-deps \
  --extra notebooks --extra data --extra dev -c constraints-cpu.txt --no-emit-index-url --no-emit-find-links \
  --output-file requirements.lock pyproject.toml
echo "lock: wrote requirements.lock ($(grep -c '^[a-zA-Z0-9].*==' requirements.lock) packages)"
