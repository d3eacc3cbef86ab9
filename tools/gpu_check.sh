#!/usr/bin/env bash
# GPU check: everything that needs a CUDA device, in one go (not part of CI, which has no GPU).
#
#   bash tools/gpu_check.sh            # from anywhere; runs in the repository root, venv at .venv
#
# Parts, each under its own `timeout` (a part that fails or runs out of time is reported and the next one
# still runs), sized to finish in about 8 minutes on one H100 (hard limit: the whole script stays within
# GPU_CHECK_BUDGET seconds, default 540; a part that no longer fits is skipped):
#   1. nvidia-smi -L and torch's view of the device
#   2. the CUDA tests (pytest -k cuda: tiny-model smoke runs of both benchmarks, AMP on; skipped without a GPU)
#   3. benchmarks/inference.py on cuda, real R50 settings (800x1199 -> 427x640, batch 1 and 4, typical
#      and crowded scenes), float32, then with --amp (float16 autocast)
#   4. benchmarks/training.py on cuda: the stage-2 step (frozen R50 detector, 2 x 512x640) against the
#      official step, and the quickstart joint step before/after (ALL_QUERY_MASKS True / default)
#   5. the quickstart training on cuda for 300 iterations with one evaluation
# Every figure is printed (and kept in $GPU_CHECK_OUT/<part>.log); a summary table ends the run.
# Environment: PYTHON (default .venv/bin/python), GPU_CHECK_OUT (default output/gpu_check),
# GPU_CHECK_BUDGET (seconds, default 540).
set -u
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
OUT=${GPU_CHECK_OUT:-output/gpu_check}
BUDGET=${GPU_CHECK_BUDGET:-540}
START=$(date +%s)
mkdir -p "$OUT"
SUMMARY=()
FAILED=0

# run_part NAME LIMIT_SECONDS COMMAND...: run under `timeout` (capped by what is left of the budget).
run_part() {
    local name=$1 limit=$2
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
    echo ">>> [$name] (time limit ${limit}s) $*"
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

run_part device 15 bash -c "nvidia-smi -L && $PY -c 'import torch; assert torch.cuda.is_available(), \"torch sees no CUDA device\"; print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda, torch.cuda.get_device_name(0))'"
if [[ ${SUMMARY[0]} != device*ok* ]]; then
    echo "no usable CUDA device: stopping (every other part needs one)"
    exit 1
fi
run_part cuda_tests 75 "$PY" -m pytest -q -p no:cacheprovider -rs tests -k cuda
run_part inference_fp32 120 "$PY" -m benchmarks.inference --device cuda --warmup 2 --iters 10
run_part inference_amp 75 "$PY" -m benchmarks.inference --device cuda --amp --warmup 2 --iters 10 --flops off
run_part training 120 "$PY" -m benchmarks.training --device cuda --warmup 2 --iters 10 --quickstart-iters 20
run_part quickstart_train 135 "$PY" tools/train_net.py --config-file configs/quickstart/detr_r18_quickstart.yaml \
    MODEL.DEVICE cuda SOLVER.MAX_ITER 300 TEST.EVAL_PERIOD 300 OUTPUT_DIR output/gpu_check_quickstart

echo
echo "=== gpu_check summary ($(($(date +%s) - START))s of ${BUDGET}s; logs in $OUT) ==="
printf '%-20s %-28s %6s\n' part status time
for line in "${SUMMARY[@]}"; do
    echo "$line"
done
exit $FAILED
