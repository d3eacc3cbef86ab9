"""Benchmark the panoptic error analysis (issue 24): what ``TEST.PANOPTIC_ERROR_ANALYSIS`` adds to
the in-process evaluator's time, on the COCO sample x50 (100 images) with model-like perturbed
predictions (the evaluation benchmark's data, :func:`benchmarks.evaluation.coco_sample_set`).

    python -m benchmarks.error_analysis             # 50 copies, 5 rounds
    python -m benchmarks.error_analysis --copies 10 --rounds 2 --worst 2

Each round times, interleaved, with the GT maps cached (every evaluation after the first during
training) and the per-image work in ``process`` (``num_workers=0``, so all of it is counted):
- ``evaluator, no files``: ``FastCOCOPanopticEvaluator`` alone (process + evaluate + tables);
- ``+ analysis, no files``: the same with ``error_analysis=True`` (causes of every FP/FN, oracle
  gains, the printed table): the analysis' per-image cost;
- ``evaluator, files``: with an output folder, as in ``train_net`` (per-class JSON + chart);
- ``+ analysis, files``: also the analysis JSON + chart (``worst_images=0``);
- ``+ analysis + N pictures``: with the ``--worst`` worst images drawn (a fixed cost, N images
  whatever the dataset size; the benchmark has no image files, so they are drawn on gray).
Prints the best time of each and the ratios to the evaluator with the same outputs. Outputs go to a
temporary folder that is removed.
"""

import argparse
import logging
import os
import platform
import shutil
import tempfile
import time
from typing import Callable, Dict, List

import numpy as np

from benchmarks.evaluation import _copy_outputs, coco_sample_set
from detr_d2.evaluation import GROUND_TRUTH_CACHE, FastCOCOPanopticEvaluator


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--copies", type=int, default=50, help="copies of the 2-image COCO sample")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (best is kept)")
    p.add_argument("--worst", type=int, default=4, help="worst images drawn in the last variant")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _evaluate(make: Callable[[], FastCOCOPanopticEvaluator], inputs, outputs) -> float:
    start = time.perf_counter()
    evaluator = make()
    evaluator.reset()
    for x, y in zip(inputs, outputs):
        evaluator.process([x], [y])
    evaluator.evaluate()
    return time.perf_counter() - start


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> None:
    args = parse_args(argv)
    root = tempfile.mkdtemp(prefix="detr_d2_error_analysis_bench_")
    try:
        data = coco_sample_set(root, args.copies, np.random.default_rng(args.seed))
        out = os.path.join(root, "out")

        def make(out_dir, **kwargs):
            return lambda: FastCOCOPanopticEvaluator(data.name, out_dir, num_workers=0, **kwargs)

        variants: Dict[str, Callable[[], FastCOCOPanopticEvaluator]] = {
            "evaluator, no files": make(None),
            "+ analysis, no files": make(None, error_analysis=True, worst_images=0),
            "evaluator, files": make(out),
            "+ analysis, files": make(out, error_analysis=True, worst_images=0),
            f"+ analysis + {args.worst} pictures": make(
                out, error_analysis=True, worst_images=args.worst
            ),
        }
        logging.getLogger("detr_d2").setLevel(logging.WARNING)  # tables not printed while timed
        GROUND_TRUTH_CACHE.clear()
        _evaluate(variants["evaluator, no files"], data.inputs, _copy_outputs(data.outputs))
        times: Dict[str, List[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, make in variants.items():
                times[name].append(_evaluate(make, data.inputs, _copy_outputs(data.outputs)))
        best = {name: min(t) for name, t in times.items()}
        print(
            f"{data.num_images} images ({data.height}x{data.width}), best of {args.rounds} "
            f"interleaved rounds, GT cached, num_workers=0; CPU: {_cpu_name()}, "
            f"{os.cpu_count()} logical cores"
        )
        for name, t in best.items():
            base = best["evaluator, no files" if "no files" in name else "evaluator, files"]
            print(
                f"  {name:<28} {t:7.3f} s  {1000 * t / data.num_images:7.2f} ms/image  "
                f"{t / base:5.2f}x the evaluator with the same outputs"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
