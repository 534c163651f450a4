#!/usr/bin/env bash
# Creates a virtualenv and installs the project. Usage: scripts/setup.sh [light|dev|full]
#   light: the decision CLI only (no torch); dev: light + test and lint tools (no torch);
#   full (default): + training stack + dev tools.
# PYTHON: the interpreter, Python 3.11, 3.12 or 3.13 (default: the first of python3.11, python3.12,
#   python3.13, python3 that runs; a name pyenv knows but has not activated is found under `pyenv root`).
# VENV: the virtualenv folder (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-full}"
VENV="${VENV:-.venv}"
case "$mode" in light|dev|full) ;; *) echo "setup: unknown mode '$mode' (light, dev or full)" >&2; exit 2 ;; esac

supported() { "$1" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 13) else 1)' 2>/dev/null; }
resolve() {  # print a runnable, supported interpreter for the name $1, or nothing
  if supported "$1"; then echo "$1"; return; fi
  local root candidate
  root="$(pyenv root 2>/dev/null)" || return 0
  for candidate in $(ls -d "$root"/versions/*/bin/"$(basename "$1")" 2>/dev/null | sort -rV); do
    if supported "$candidate"; then echo "$candidate"; return; fi
  done
}

PY=""
if [ -n "${PYTHON:-}" ]; then
  PY="$(resolve "$PYTHON")"
  [ -n "$PY" ] || { echo "setup: PYTHON=$PYTHON is not a runnable Python 3.11, 3.12 or 3.13" >&2; exit 2; }
else
  for c in python3.11 python3.12 python3.13 python3; do
    PY="$(resolve "$c")"
    [ -z "$PY" ] || break
  done
  [ -n "$PY" ] || { echo "setup: need Python 3.11, 3.12 or 3.13 (or set PYTHON=...)" >&2; exit 2; }
fi
version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }
want="$(version "$PY")"

if [ -x "$VENV/bin/python" ]; then
  have="$(version "$VENV/bin/python")"
  [ "$have" = "$want" ] || { echo "setup: $VENV is Python $have, not $want: remove it or set VENV=..." >&2; exit 2; }
else
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade pip setuptools wheel

if [ "$want" = "3.13" ]; then
  # durable-rules ships only C sources that call PyEval_CallObject, which Python 3.13 removed: they build
  # but fail to import. Build them against its replacement; --no-cache-dir so that a wheel pip cached
  # from a plain build is not reused.
  durable="$(grep -o '"durable-rules==[^"]*"' pyproject.toml | tr -d '"')"
  if ! "$VENV/bin/python" -c 'import durable.engine' 2>/dev/null; then
    CPPFLAGS="${CPPFLAGS:-} -DPyEval_CallObject=PyObject_CallObject" \
      pip install -q --no-cache-dir --force-reinstall --no-deps "$durable"
  fi
fi

case "$mode" in
  full)
    # torch first, pinned: this version's CPU wheel is on the machine for Python 3.11; an unpinned torch
    # pulls a CUDA build. On 3.12/3.13 the pin comes from PyPI as that CUDA build (it runs on the CPU).
    if [ "$want" != "3.11" ]; then
      echo "setup: torch 2.13.0 for Python $want is PyPI's CUDA build (about 2.6 GB to download);" \
           "for the decision core without torch: scripts/setup.sh dev" >&2
    fi
    pip install -q "torch==2.13.0"
    pip install -q -e ".[train,dev]" ;;
  dev) pip install -q -e ".[dev]" ;;
  light) pip install -q -e . ;;
esac
"$VENV/bin/python" -c 'import durable.engine' \
  || { echo "setup: durable-rules does not import in $VENV (see above)" >&2; exit 1; }
echo "setup: ok ($mode, Python $want) -> $VENV"
