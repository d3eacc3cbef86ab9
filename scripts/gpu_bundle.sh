#!/usr/bin/env bash
# Prepare what tools/gpu_check.sh installs on a GPU machine without network (docs/gpu_check.md):
#
#   D2_SOURCE=path/to/detectron2.tar.gz bash scripts/gpu_bundle.sh      # writes gpu_bundle/ (git-ignored)
#
# The GPU machine this is for has Python 3.12 with torch, torchvision, numpy, onnx, onnxruntime,
# transformers, timm, safetensors, opencv, scipy, matplotlib, tqdm, pyyaml, pillow, tabulate, portalocker,
# cloudpickle, pytest and tensorboard preinstalled, and receives the working tree plus at most 64 MiB of
# ignored files. The bundle holds the rest:
#   gpu_bundle/detectron2.tar.gz    Detectron2's source (D2_SOURCE: a .tar.gz, or a checkout, packed here)
#   gpu_bundle/wheels/              Python 3.12 manylinux / pure-Python wheels of what that machine lacks
#                                   (versions of requirements-latest.txt), built here where only a source
#                                   distribution exists (fvcore, antlr4-python3-runtime)
#   gpu_bundle/requirements.txt     what gpu_check.sh installs from wheels/ with pip --no-index (and then
#                                   panopticapi-lite with --no-deps)
# Environment: D2_SOURCE (required), PYTHON (a Python with pip that builds the pure-Python wheels; default
# .venv-latest/bin/python, else python3), GPU_BUNDLE (output folder, default gpu_bundle).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${GPU_BUNDLE:-gpu_bundle}
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv-latest/bin/python ]; then PY=.venv-latest/bin/python; else PY=python3; fi
fi
if [ -z "${D2_SOURCE:-}" ]; then
  echo "error: set D2_SOURCE to Detectron2's source (.tar.gz or checkout folder): the GPU machine has no network" >&2
  exit 1
fi
# what the GPU machine lacks (Detectron2's and detr_d2's requirements): required at these versions
LACKING=(fvcore iopath yacs termcolor pycocotools omegaconf hydra-core antlr4-python3-runtime black)
# their requirements and Detectron2's build tools, installed there only where missing (any version)
IF_MISSING=(click mypy_extensions pathspec platformdirs pytokens packaging ninja setuptools wheel)
pin() { # the version requirements-latest.txt pins for $1, else the one installed beside $PY
  local v
  v=$(grep -i -E "^$1==" requirements-latest.txt | head -n 1 | cut -d= -f3)
  [ -n "$v" ] || v=$("$PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null) || true
  echo "$v"
}

tmp=$(mktemp -d "${OUT%/}.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/wheels"
case "$D2_SOURCE" in
*.tar.gz | *.tgz)
  [ -f "$D2_SOURCE" ] || { echo "error: D2_SOURCE=$D2_SOURCE: no such file" >&2; exit 1; }
  cp "$D2_SOURCE" "$tmp/detectron2.tar.gz"
  ;;
*)
  [ -f "$D2_SOURCE/setup.py" ] || { echo "error: D2_SOURCE=$D2_SOURCE: expected a .tar.gz or a folder with Detectron2's setup.py" >&2; exit 1; }
  tar -czf "$tmp/detectron2.tar.gz" --exclude=.git --exclude=build --exclude='*.so' \
    -C "$(dirname "$D2_SOURCE")" "$(basename "$D2_SOURCE")"
  ;;
esac

reqs=() lines=()
for name in "${LACKING[@]}" "${IF_MISSING[@]}"; do
  v=$(pin "$name")
  reqs+=("$name${v:+==$v}")
done
for name in "${LACKING[@]}"; do lines+=("$name==$(pin "$name")"); done
lines+=("${IF_MISSING[@]}")
# panopticapi-lite: not in requirements.txt, gpu_check.sh installs it with --no-deps (it declares numpy<2)
reqs_nodeps=("panopticapi-lite==$(pin panopticapi-lite)")
printf '%s\n' "${lines[@]}" >"$tmp/requirements.txt"

echo "[bundle] downloading Python 3.12 wheels: ${reqs[*]} ${reqs_nodeps[*]}"
for r in "${reqs[@]}" "${reqs_nodeps[@]}"; do
  if ! "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$tmp/wheels" "$r" 2>/dev/null; then
    # only a source distribution on the index: build its (pure-Python) wheel here
    echo "[bundle] no wheel of $r on the index: building it"
    "$PY" -m pip wheel --quiet --no-deps -w "$tmp/wheels" "$r"
  fi
done
for w in "$tmp"/wheels/*.whl; do # everything must install on CPython 3.12 / x86-64 Linux
  case "$(basename "$w")" in
  *-py3-none-any.whl | *-py2.py3-none-any.whl | *-cp312-*manylinux*x86_64*.whl | *-abi3-*manylinux*x86_64*.whl | *-py3-none-manylinux*x86_64*.whl) ;;
  *) echo "error: $(basename "$w") is not a Python 3.12 x86-64 Linux wheel" >&2; exit 1 ;;
  esac
done

size=$(du -sk "$tmp" | cut -f1)
if ((size > 60 * 1024)); then
  echo "error: the bundle is $((size / 1024)) MiB; the GPU machine receives at most 64 MiB of ignored files" >&2
  exit 1
fi
rm -rf "$OUT" && mv "$tmp" "$OUT" && trap - EXIT
echo "[bundle] wrote $OUT/ ($((size / 1024)).$(((size % 1024) * 10 / 1024)) MiB): detectron2.tar.gz, $(ls "$OUT/wheels" | wc -l) wheels, requirements.txt"
echo "[bundle] on the GPU machine: bash tools/gpu_check.sh   (the run tool: carry gpu_bundle)"
