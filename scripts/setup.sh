#!/usr/bin/env bash
# Create .venv with Python 3.10, install the pinned stack (requirements-lock.txt) and detr_d2 (editable).
# Idempotent: a second run with unchanged requirements only re-checks and exits.
# Override the interpreter with PYTHON=/path/to/python3.10, the venv location with VENV=path.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

is_py310() { "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 10) else 1)' >/dev/null 2>&1; }

find_python() {
  # Prints the first Python 3.10 found: $PYTHON, python3.10 on PATH, pyenv's 3.10.x, python3.
  local c v
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  if command -v python3.10 >/dev/null 2>&1 && is_py310 python3.10; then command -v python3.10; return; fi
  if command -v pyenv >/dev/null 2>&1; then
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.10(\.|$)' | sort -V -r); do
      c=$(PYENV_VERSION=$v pyenv which python 2>/dev/null) && is_py310 "$c" && { echo "$c"; return; }
    done
  fi
  for c in python3 python; do
    if command -v "$c" >/dev/null 2>&1 && is_py310 "$c"; then command -v "$c"; return; fi
  done
}

if [ ! -x "$VENV/bin/python" ]; then
  PY=$(find_python || true)
  if [ -z "$PY" ] || ! is_py310 "$PY"; then
    echo "error: scripts/setup.sh needs Python 3.10 (the pinned Detectron2 wheel sal-detectron2==0.7.2 is cp310)." >&2
    echo "       Found: ${PY:-none}${PY:+ ($("$PY" -V 2>&1))}. Install Python 3.10 (e.g. 'pyenv install 3.10') or set PYTHON=/path/to/python3.10." >&2
    exit 1
  fi
  echo "[setup] creating $VENV with $PY ($("$PY" -V 2>&1))"
  "$PY" -m venv "$VENV"
fi

stamp="$VENV/.detr_d2_setup_stamp"
want=$(cat requirements-lock.txt setup.py | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c 'import detr_d2' 2>/dev/null; then
  echo "[setup] $VENV is up to date (requirements-lock.txt and setup.py unchanged); nothing to do."
  exit 0
fi
echo "[setup] installing the pinned stack into $VENV (first run downloads ~3 GB, a few minutes)"
"$VENV/bin/python" -m pip install --quiet --upgrade "pip<25" setuptools wheel
"$VENV/bin/python" -m pip install --quiet -r requirements-lock.txt
"$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c 'import detr_d2, detectron2, torch; print("[setup] ok: torch", torch.__version__, "detectron2", detectron2.__version__)'
echo "$want" > "$stamp"
