#!/usr/bin/env bash
# GPU check: everything that needs a CUDA device, in one go (not part of CI, which has no GPU); what it prints:
# docs/gpu_check.md.
#
#   D2_SOURCE=<detectron2 .tar.gz or checkout> bash scripts/gpu_bundle.sh   # here: writes gpu_bundle/
#   bash tools/gpu_check.sh                                                # there: repository root + gpu_bundle/
#
# Made for a GPU machine without network whose Python 3.12 already has torch (CUDA build), torchvision,
# numpy, onnx(runtime), transformers, timm, ... but no Detectron2 and none of fvcore, iopath, yacs,
# pycocotools, panopticapi, omegaconf, hydra-core, termcolor, black. Parts, each under its own `timeout`
# (a part that fails or runs out of time is reported and the next one still runs), sized to finish in about
# 8 minutes on one H100 (the whole script stays within GPU_CHECK_BUDGET seconds, default 480; a part that
# no longer fits is skipped):
#   0. setup: a venv (GPU_CHECK_VENV, default output/gpu_check/venv) that sees the preinstalled torch
#      (--system-site-packages, or a .pth naming the interpreter's site-packages when that interpreter is
#      itself a venv), the bundle's wheels installed with pip --no-index, Detectron2 built from the bundled
#      source for this GPU's architecture only (ninja, all cores). Skipped when GPU_CHECK_PYTHON names a
#      ready interpreter (e.g. .venv-latest/bin/python).
#   1. nvidia-smi -L and torch's view of the device
#   2. the CUDA tests (pytest -k cuda: tiny-model smoke runs of both benchmarks with AMP, the model on cuda)
#   3. benchmarks/inference.py on cuda, real R50 settings (800x1199 -> 427x640, batch 1 and 4, typical and
#      crowded scenes) against the official algorithm, float32, then with --amp (float16 autocast)
#   4. benchmarks/training.py on cuda: the stage-2 step (frozen R50 detector, 2 x 512x640) against the
#      official step, and the quickstart joint step, float32 then --amp
#   5. the quickstart training on cuda for 300 iterations with one evaluation (PQ printed)
# Every figure is printed (and kept in $GPU_CHECK_OUT/<part>.log); a summary table ends the run.
# Rehearsal on a machine without a GPU: CUDA_VISIBLE_DEVICES="" GPU_CHECK_REHEARSAL=1 runs every part on
# the CPU at tiny sizes (the CUDA tests skip themselves, no --amp parts): the whole path but the CUDA parts.
# Environment: PYTHON (the interpreter with torch, default python3), GPU_BUNDLE (default gpu_bundle),
# GPU_CHECK_VENV, GPU_CHECK_PYTHON, GPU_CHECK_OUT (default output/gpu_check), GPU_CHECK_BUDGET (seconds;
# rehearsal 3600), GPU_CHECK_TIME_SCALE (factor on each part's limit; rehearsal 10), GPU_CHECK_REHEARSAL.
set -u
cd "$(dirname "$0")/.."

BASE_PY=${PYTHON:-python3}
BUNDLE=${GPU_BUNDLE:-gpu_bundle}
OUT=${GPU_CHECK_OUT:-output/gpu_check}
VENV=${GPU_CHECK_VENV:-$OUT/venv}
BUDGET=${GPU_CHECK_BUDGET:-480}
REHEARSAL=${GPU_CHECK_REHEARSAL:-0}
if [ "$REHEARSAL" = 1 ]; then # a CPU machine: the Detectron2 build and every part take far longer
    SCALE=${GPU_CHECK_TIME_SCALE:-10}
    BUDGET=${GPU_CHECK_BUDGET:-3600}
else
    SCALE=${GPU_CHECK_TIME_SCALE:-1}
fi
START=$(date +%s)
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} # detr_d2, tests and benchmarks from this tree
SUMMARY=()
FAILED=0

# run_part NAME LIMIT_SECONDS COMMAND...: run under `timeout` (capped by what is left of the budget).
run_part() {
    local name=$1 limit=$(($2 * SCALE))
    shift 2
    local left=$((BUDGET - ($(date +%s) - START)))
    if ((left < 20)); then
        echo ">>> [$name] skipped: ${left}s left of the ${BUDGET}s budget"
        SUMMARY+=("$(printf '%-20s %-28s %5s' "$name" "SKIPPED (no time left)" "-")")
        FAILED=1
        return
    fi
    ((limit > left)) && limit=$left
    echo
    local shown="$*"
    ((${#shown} > 200)) && shown="${shown:0:60} ..." # (the setup function's whole text)
    echo ">>> [$name] (time limit ${limit}s) $shown"
    local t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]} status
    local dt=$(($(date +%s) - t0))
    if ((rc == 0)); then
        status="ok"
    elif ((rc == 124 || rc == 137)); then
        status="TIMED OUT after ${limit}s"
        FAILED=1
    else
        status="FAILED (exit $rc)"
        FAILED=1
    fi
    echo ">>> [$name] $status in ${dt}s"
    SUMMARY+=("$(printf '%-20s %-28s %5ss' "$name" "$status" "$dt")")
}

# setup_venv: the venv described above (run under run_part; a second run reuses what is there)
setup_venv() {
    set -euo pipefail
    [ -f "$BUNDLE/requirements.txt" ] || { echo "error: no $BUNDLE/requirements.txt: run scripts/gpu_bundle.sh where there is network and carry $BUNDLE/"; exit 1; }
    "$BASE_PY" -c 'import torch' || { echo "error: $BASE_PY has no torch: set PYTHON to the interpreter with the preinstalled torch"; exit 1; }
    if [ ! -x "$VENV/bin/python" ]; then
        "$BASE_PY" -m venv --system-site-packages "$VENV"
    fi
    if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
        # $BASE_PY is itself a venv: --system-site-packages reaches the base installation, not its packages
        site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        "$BASE_PY" -c 'import site; print("\n".join(site.getsitepackages()))' >"$site/_gpu_check_base.pth"
        "$VENV/bin/python" -c 'import torch'
    fi
    local pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-index --find-links "$BUNDLE/wheels")
    "${pip[@]}" -r "$BUNDLE/requirements.txt"
    "${pip[@]}" --no-deps panopticapi-lite
    if ! (cd "$VENV" && bin/python -c 'import detectron2._C') 2>/dev/null; then
        rm -rf "$VENV/src" && mkdir -p "$VENV/src"
        tar -xzf "$BUNDLE/detectron2.tar.gz" -C "$VENV/src"
        local src
        src=$(find "$VENV/src" -mindepth 2 -maxdepth 2 -name setup.py -printf '%h\n' | head -n 1)
        local arch
        arch=$("$VENV/bin/python" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability() if torch.cuda.is_available() else "")')
        echo "building Detectron2 ($src) for CUDA architecture ${arch:-none (CPU only)} with $(nproc) jobs"
        TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=$(nproc) "${pip[@]}" --no-build-isolation "$src"
    fi
    (cd "$VENV" && bin/python -c 'import detectron2, detectron2._C, torch; print("ready: torch", torch.__version__, "detectron2", detectron2.__version__, "from", detectron2.__file__)')
}

if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
    PY=$GPU_CHECK_PYTHON
    echo "using $PY (GPU_CHECK_PYTHON): no setup"
else
    export BASE_PY BUNDLE VENV
    run_part setup 300 bash -c "$(declare -f setup_venv); setup_venv"
    PY=$VENV/bin/python
fi
if [ -z "${GPU_CHECK_PYTHON:-}" ] && [[ ${SUMMARY[-1]} != setup*" ok "* ]]; then
    echo "setup failed: stopping (every other part needs the venv)"
    exit 1
fi

device_info="import torch; ok = torch.cuda.is_available(); print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0) if ok else 'no CUDA device')"
if [ "$REHEARSAL" = 1 ]; then
    # no GPU here: the same parts on the CPU, at tiny sizes (the CUDA tests skip themselves; no --amp)
    run_part device 60 "$PY" -c "$device_info"
    DEV=cpu
    SIZES=(--threads 1 --depth 18 --hidden-dim 128 --enc-layers 1 --dec-layers 1 --dim-feedforward 64 --num-queries 10)
    INFER=("${SIZES[@]}" --input-size 64x64 --output-size 32x32 --pp-kept 4 --pp-iters 1 --warmup 1 --iters 1)
    TRAIN=("${SIZES[@]}" --image-size 64x64 --batch-size 2 --segments 3 --warmup 1 --iters 1 --quickstart-iters 1
        --quickstart-opts SOLVER.IMS_PER_BATCH 2 "INPUT.MIN_SIZE_TRAIN" "(64,)" INPUT.MAX_SIZE_TRAIN 64)
    AMP=()
    QS_ITERS=10
else
    run_part device 60 bash -c "nvidia-smi -L && $PY -c \"$device_info; assert ok, 'torch sees no CUDA device'\""
    if [[ ${SUMMARY[-1]} != device*" ok "* ]]; then
        echo "no usable CUDA device: stopping (every other part needs one)"
        exit 1
    fi
    DEV=cuda
    INFER=(--warmup 2 --iters 10)
    TRAIN=(--warmup 2 --iters 10 --quickstart-iters 20)
    AMP=(--amp)
    QS_ITERS=300
fi
run_part cuda_tests 100 "$PY" -m pytest -q -p no:cacheprovider -rs tests -k cuda
# the figures: float32, then float16 autocast (--amp), detr_d2 against the official algorithm in each run
run_part inference_fp32 90 "$PY" -m benchmarks.inference --device $DEV "${INFER[@]}"
((${#AMP[@]})) && run_part inference_amp 60 "$PY" -m benchmarks.inference --device $DEV "${AMP[@]}" "${INFER[@]}" --flops off
run_part training_fp32 90 "$PY" -m benchmarks.training --device $DEV "${TRAIN[@]}"
((${#AMP[@]})) && run_part training_amp 60 "$PY" -m benchmarks.training --device $DEV "${AMP[@]}" "${TRAIN[@]}"
run_part quickstart_train 120 "$PY" tools/train_net.py --config-file configs/quickstart/detr_r18_quickstart.yaml \
    MODEL.DEVICE $DEV SOLVER.MAX_ITER $QS_ITERS TEST.EVAL_PERIOD $QS_ITERS OUTPUT_DIR "$OUT/quickstart"

echo
echo "=== gpu_check summary ($(($(date +%s) - START))s of ${BUDGET}s; logs in $OUT) ==="
printf '%-20s %-28s %6s\n' part status time
for line in "${SUMMARY[@]}"; do
    echo "$line"
done
exit $FAILED
