#!/usr/bin/env bash
# Create a venv with one of the two supported stacks and install detr_d2 (editable) into it.
#
#   bash scripts/setup.sh           # pinned: .venv, Python 3.10, requirements-lock.txt (torch 2.3.1 and the
#                                   # sal-detectron2 0.7.2 wheel)
#   bash scripts/setup.sh latest    # newest: .venv-latest, Python 3.12, requirements-latest.txt (newest torch,
#                                   # numpy 2, transformers 5) + Detectron2 built from source (D2_SOURCE)
#
# Idempotent: a second run with unchanged requirements (and D2_SOURCE) only re-checks and exits.
# Environment: PYTHON=/path/to/python (the interpreter; default: found as below), VENV=path (the venv),
# D2_SOURCE (newest stack only): where Detectron2's source comes from, one of
#   a git URL (default git+https://github.com/facebookresearch/detectron2.git, what Detectron2's install
#   page uses), a local checkout (folder with setup.py), or a source tarball (.tar.gz/.tgz, one top folder);
#   unset on a re-run: the source the venv was built from.
set -euo pipefail
cd "$(dirname "$0")/.."
STACK=${1:-pinned}
D2_GIT=git+https://github.com/facebookresearch/detectron2.git
case "$STACK" in
pinned) WANT_PY=3.10 LOCK=requirements-lock.txt VENV=${VENV:-.venv} ;;
latest)
  WANT_PY=3.12 LOCK=requirements-latest.txt VENV=${VENV:-.venv-latest}
  # unset: the source this venv was built from (a re-run stays a no-op), else Detectron2's git URL
  if [ -z "${D2_SOURCE:-}" ] && [ -f "$VENV/.detr_d2_d2_source" ]; then D2_SOURCE=$(head -n 1 "$VENV/.detr_d2_d2_source"); fi
  D2_SOURCE=${D2_SOURCE:-$D2_GIT}
  ;;
*)
  echo "error: unknown stack '$STACK': use 'bash scripts/setup.sh' (pinned) or 'bash scripts/setup.sh latest'" >&2
  exit 2
  ;;
esac

is_py() { "$1" -c "import sys; sys.exit(0 if '%d.%d' % sys.version_info[:2] == '$WANT_PY' else 1)" >/dev/null 2>&1; }

find_python() {
  # Prints the first Python $WANT_PY found: $PYTHON, python$WANT_PY on PATH, pyenv's newest $WANT_PY.x, python3.
  local c v
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  if command -v "python$WANT_PY" >/dev/null 2>&1 && is_py "python$WANT_PY"; then command -v "python$WANT_PY"; return; fi
  if command -v pyenv >/dev/null 2>&1; then
    for v in $(pyenv versions --bare 2>/dev/null | grep -E "^${WANT_PY//./\\.}(\\.|$)" | sort -V -r); do
      c=$(PYENV_VERSION=$v pyenv which python 2>/dev/null) && is_py "$c" && { echo "$c"; return; }
    done
  fi
  for c in python3 python; do
    if command -v "$c" >/dev/null 2>&1 && is_py "$c"; then command -v "$c"; return; fi
  done
}

if [ ! -x "$VENV/bin/python" ]; then
  PY=$(find_python || true)
  if [ -z "$PY" ] || ! is_py "$PY"; then
    if [ "$STACK" = pinned ]; then
      why="the pinned Detectron2 wheel sal-detectron2==0.7.2 is cp310; 'bash scripts/setup.sh latest' is the Python 3.12 stack"
    else
      why="the newest stack is verified on Python 3.12"
    fi
    echo "error: scripts/setup.sh $STACK needs Python $WANT_PY ($why)." >&2
    echo "       Found: ${PY:-none}${PY:+ ($("$PY" -V 2>&1))}. Install Python $WANT_PY (e.g. 'pyenv install $WANT_PY') or set PYTHON=/path/to/python$WANT_PY." >&2
    exit 1
  fi
  echo "[setup] creating $VENV with $PY ($("$PY" -V 2>&1))"
  "$PY" -m venv "$VENV"
fi
VPY=$VENV/bin/python

stamp="$VENV/.detr_d2_setup_stamp"
want=$( (cat "$LOCK" setup.py && echo "${D2_SOURCE:-}") | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VPY" -c 'import detr_d2' 2>/dev/null; then
  echo "[setup] $VENV is up to date ($LOCK and setup.py unchanged); nothing to do."
  exit 0
fi

if [ "$STACK" = pinned ]; then
  echo "[setup] installing the pinned stack into $VENV (first run downloads ~3 GB, a few minutes)"
  "$VPY" -m pip install --quiet --upgrade "pip<25" setuptools wheel
  "$VPY" -m pip install --quiet --no-compile -r "$LOCK"
else
  echo "[setup] installing the newest stack into $VENV (first run downloads ~3.5 GB, a few minutes)"
  "$VPY" -m pip install --quiet --upgrade pip setuptools wheel
  "$VPY" -m pip install --quiet --no-compile -r "$LOCK"
  # panopticapi-lite declares numpy<2 (pip would downgrade numpy and break opencv / ml_dtypes); its
  # pq_compute runs on numpy 2, and its other requirements (numpy, Pillow) are in the lock file.
  "$VPY" -m pip install --quiet --no-compile --no-deps panopticapi-lite==0.2.0
  # Detectron2 from source, built against the torch just installed (CPU-only without nvcc, ~2 min on 2 cores)
  src=$D2_SOURCE
  case "$D2_SOURCE" in
  git+* | http://* | https://*) ;;
  *.tar.gz | *.tgz)
    [ -f "$D2_SOURCE" ] || { echo "error: D2_SOURCE=$D2_SOURCE: no such file (expected a Detectron2 source tarball)" >&2; exit 1; }
    rm -rf "$VENV/src/detectron2" && mkdir -p "$VENV/src/detectron2"
    tar -xzf "$D2_SOURCE" -C "$VENV/src/detectron2"
    src=$(find "$VENV/src/detectron2" -mindepth 2 -maxdepth 2 -name setup.py -printf '%h\n' | head -n 1)
    [ -n "$src" ] || { echo "error: D2_SOURCE=$D2_SOURCE: no setup.py under its top folder (not a Detectron2 source tarball)" >&2; exit 1; }
    ;;
  *)
    [ -f "$D2_SOURCE/setup.py" ] || { echo "error: D2_SOURCE=$D2_SOURCE: expected a git URL, a .tar.gz, or a folder with Detectron2's setup.py" >&2; exit 1; }
    ;;
  esac
  # built before from the same source against the same torch: keep it (the build takes minutes)
  built_with=$(printf '%s\n%s' "$D2_SOURCE" "$("$VPY" -c 'import torch; print(torch.__version__)')")
  if [ -f "$VENV/.detr_d2_d2_source" ] && [ "$(cat "$VENV/.detr_d2_d2_source")" = "$built_with" ] &&
    (cd "$VENV" && bin/python -c 'import detectron2._C') 2>/dev/null; then
    echo "[setup] Detectron2 already built from $D2_SOURCE against this torch"
  else
    echo "[setup] building Detectron2 from $D2_SOURCE"
    "$VPY" -m pip install --quiet --no-compile --no-build-isolation "$src"
    echo "$built_with" >"$VENV/.detr_d2_d2_source"
  fi
fi
"$VPY" -m pip install --quiet --no-deps --no-build-isolation -e .
# The installs above skip pip's byte-compilation, which compiles one file at a time; compile the venv's
# site-packages here on all cores instead: the same .pyc files, about 12 s less of the pinned setup on 2 cores
# (docs/speed.md). A file that does not compile is reported and skipped, as pip does.
site_dirs=$("$VPY" -c 'import sysconfig; print("\n".join(sorted({sysconfig.get_path(k) for k in ("purelib", "platlib")})))')
echo "$site_dirs" | while read -r d; do
  "$VPY" -m compileall -q -j 0 "$d" || echo "[setup] note: some files in $d did not byte-compile (pip skips these too)"
done
# run from a folder other than a Detectron2 checkout, so that the installed package is the one imported
(cd "$VENV" && bin/python -c 'import detr_d2, detectron2, detectron2._C, torch; print("[setup] ok: Python", __import__("platform").python_version(), "torch", torch.__version__, "detectron2", detectron2.__version__)')
echo "$want" >"$stamp"
