#!/usr/bin/env bash
# Creates .venv and installs the project. Usage: scripts/setup.sh [light|full]
#   light: the decision CLI only (no torch); full (default): + training stack + dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-full}"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for c in python3.12 python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(0 if (3,11) <= sys.version_info[:2] <= (3,12) else 1)' 2>/dev/null; then PY="$c"; break; fi
  done
fi
[ -n "$PY" ] || { echo "setup: need Python 3.11 or 3.12 (durable-rules 2.0.28 does not import on 3.13)" >&2; exit 2; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
if [ "$mode" = "full" ]; then
  # torch first, pinned: this version's CPU wheel is on the machine; an unpinned torch pulls a CUDA build.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[train,dev]"
else
  .venv/bin/python -m pip install -q -e .
fi
echo "setup: ok ($mode) -> .venv"
