#!/usr/bin/env python
"""Benchmark panoptic evaluation: Detectron2's COCOPanopticEvaluator vs panopticapi's pq_compute vs
detr_d2's FastCOCOPanopticEvaluator, per image, on the same predictions.

    python -m benchmarks.evaluation       # 50 copies of the COCO sample (100 images)
    python -m benchmarks.evaluation --copies 100 --synthetic 100 --size 480 640

Data: every copy of the COCO sample (tests/data/coco_panoptic_sample) gets its own GT PNG file and
image id and a randomly perturbed prediction (segments dropped, merged, shifted, relabelled, VOID
boxes, crowd overlaps, extra false segments); ``--synthetic`` adds random GT of the given size.
Timed, each the best of ``--repeat`` runs, divided by the number of images:
- ``d2``: COCOPanopticEvaluator.process (PNG encoding) + evaluate (PNG + JSON writing, pq_compute);
- ``pq_compute``: panopticapi.evaluation.pq_compute alone on the already written PNG + JSON
  (it uses a pool of ``os.cpu_count()`` processes);
- ``pq_compute 1 core``: the same work in this process (``pq_compute_single_core``, no pool);
- ``fast cold``: FastCOCOPanopticEvaluator (construction + process + evaluate) with an empty GT
  cache (every GT PNG decoded), the per-image work in its 2 background threads (the default);
- ``fast warm``: the same with the GT maps cached by a previous evaluation in the process (every
  periodic evaluation during training after the first);
- ``... 1 thread``: the same with everything in ``process`` (``num_workers=0``).
These are evaluations back to back with no model: the cold ones are bound by PNG decoding.

In a real evaluation the evaluator runs inside Detectron2's ``inference_on_dataset``, between model
forwards. ``--model-ms T`` (default 40, about DETR R50 at 800px on a GPU; 0 skips it) also times
that loop with a stand-in model that waits T ms per image (as the host waits for a GPU forward) and
returns the prepared prediction, and prints the time each evaluator *adds* per image over a no-op
evaluator (the fast evaluator's background threads work during the model's forwards).
All methods must agree on PQ/SQ/RQ; the script checks it. No output file is written outside a
temporary folder (``--keep DIR`` keeps the generated data there instead).
"""

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import torch
from detectron2.data.datasets import register_coco_panoptic
from detectron2.evaluation import COCOPanopticEvaluator, DatasetEvaluators, inference_on_dataset
from tqdm import tqdm

from detr_d2.data.datasets.panoptic_metadata import build_panoptic_metadata
from detr_d2.data.panoptic_io import encode_panoptic_png, read_panoptic_ids, save_panoptic_png
from detr_d2.evaluation import GROUND_TRUTH_CACHE, FastCOCOPanopticEvaluator
from tests.utils.synthetic_panoptic import (
    make_synthetic_panoptic_gt,
    perturb_prediction,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO_SAMPLE = os.path.join(ROOT, "tests", "data", "coco_panoptic_sample")
# Edits a model's errors look like; "noise" (salt-and-pepper) is left out as unrealistic.
MODEL_LIKE_PERTURBATIONS = ("drop", "merge", "shift", "relabel", "void", "crowd_overlap", "extra")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--copies",
        type=int,
        default=50,
        help="copies of the 2-image COCO sample (default 50 -> 100 images; 0 = none)",
    )
    parser.add_argument(
        "--synthetic",
        type=int,
        default=0,
        help="number of synthetic images to benchmark as a second set (default 0)",
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(480, 640),
        metavar=("H", "W"),
        help="synthetic image size (default 480 640)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed runs per method; the best is kept"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-d2", action="store_true", help="do not time Detectron2's evaluator")
    parser.add_argument(
        "--model-ms",
        type=float,
        default=40.0,
        help="stand-in model time per image for the inference_on_dataset timing "
        "(default 40; 0 = skip that timing)",
    )
    parser.add_argument(
        "--keep",
        metavar="DIR",
        default=None,
        help="write the generated data to DIR (must not exist) and keep it",
    )
    args = parser.parse_args(argv)
    if args.copies < 0 or args.synthetic < 0 or args.copies + args.synthetic == 0:
        parser.error("--copies and --synthetic must be >= 0 and not both 0")
    if args.model_ms < 0:
        parser.error("--model-ms must be >= 0")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.keep and os.path.exists(args.keep):
        parser.error(f"--keep {args.keep}: already exists (this tool never overwrites)")
    return args


class BenchmarkSet:
    """A registered GT set with one model-style prediction per image, and those predictions also
    written in the standard format (``pred.json`` + ``pred/``) for pq_compute."""

    def __init__(
        self,
        root: str,
        title: str,
        gt: List[Tuple[np.ndarray, List[Dict]]],
        categories: List[Dict[str, Any]],
        rng: np.random.Generator,
    ):
        self.title = title
        self.root = root
        self.gt_json = os.path.join(root, "gt.json")
        self.gt_dir = os.path.join(root, "gt")
        self.pred_json = os.path.join(root, "pred.json")
        self.pred_dir = os.path.join(root, "pred")
        os.makedirs(self.gt_dir)
        os.makedirs(self.pred_dir)
        self.name = f"benchmark_evaluation_{title}_{uuid.uuid4().hex[:8]}"
        meta = build_panoptic_metadata(categories, self.gt_json)
        things, stuff = (
            meta["thing_dataset_id_to_contiguous_id"],
            meta["stuff_dataset_id_to_contiguous_id"],
        )
        # Relabelled / extra segments take categories of the GT (PQ averages over categories: a
        # random one of 133 classes per error would drive it to ~0 and look nothing like a model).
        category_ids = sorted({s["category_id"] for _, segments in gt for s in segments})
        images, gt_anns, pred_anns = [], [], []
        self.inputs, self.outputs = [], []
        for i, (gt_map, segments) in enumerate(tqdm(gt, desc=f"preparing {title}", leave=False)):
            file_name = f"{i:06d}.png"
            save_panoptic_png(os.path.join(self.gt_dir, file_name), gt_map)
            images.append(
                {
                    "id": i,
                    "file_name": f"{i:06d}.jpg",
                    "height": gt_map.shape[0],
                    "width": gt_map.shape[1],
                }
            )
            gt_anns.append({"image_id": i, "file_name": file_name, "segments_info": segments})
            pred, pred_segments = perturb_prediction(
                gt_map, segments, category_ids, rng, MODEL_LIKE_PERTURBATIONS
            )
            with open(os.path.join(self.pred_dir, file_name), "wb") as f:
                f.write(encode_panoptic_png(pred))
            pred_anns.append(
                {"image_id": i, "file_name": file_name, "segments_info": pred_segments}
            )
            self.inputs.append({"image_id": i, "file_name": f"{i:06d}.jpg"})
            model_segments = []
            for s in pred_segments:
                isthing = s["category_id"] in things
                model_segments.append(
                    {
                        "id": s["id"],
                        "isthing": isthing,
                        "category_id": (things if isthing else stuff)[s["category_id"]],
                    }
                )
            self.outputs.append({"panoptic_seg": (torch.from_numpy(pred), model_segments)})
        for path, anns in ((self.gt_json, gt_anns), (self.pred_json, pred_anns)):
            with open(path, "w") as f:
                json.dump({"images": images, "annotations": anns, "categories": categories}, f)
        register_coco_panoptic(self.name, meta, root, self.gt_dir, self.gt_json)
        self.num_images = len(gt)
        self.height, self.width = gt[0][0].shape


def coco_sample_set(root: str, copies: int, rng: np.random.Generator) -> BenchmarkSet:
    with open(os.path.join(COCO_SAMPLE, "panoptic_examples.json")) as f:
        sample = json.load(f)
    maps = [
        read_panoptic_ids(os.path.join(COCO_SAMPLE, "panoptic_examples", a["file_name"]))
        for a in sample["annotations"]
    ]
    gt = [
        (maps[j], sample["annotations"][j]["segments_info"])
        for _ in range(copies)
        for j in range(len(maps))
    ]
    return BenchmarkSet(os.path.join(root, "coco"), "coco_sample", gt, sample["categories"], rng)


def synthetic_set(
    root: str, count: int, size: Tuple[int, int], rng: np.random.Generator
) -> BenchmarkSet:
    with open(os.path.join(COCO_SAMPLE, "panoptic_coco_categories.json")) as f:
        categories = json.load(f)
    gt = [
        make_synthetic_panoptic_gt(
            rng, size[0], size[1], categories, num_things=int(rng.integers(5, 25))
        )
        for _ in tqdm(range(count), desc="synthetic GT", leave=False)
    ]
    return BenchmarkSet(os.path.join(root, "synthetic"), "synthetic", gt, categories, rng)


def _best_time(fn: Callable[[], Any], repeat: int, before: Callable[[], None] = lambda: None):
    best, result = float("inf"), None
    for _ in range(repeat):
        before()
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def _pq_compute_one_core(data: BenchmarkSet):
    """pq_compute's work (JSON loading, per-image statistics) in this process, without its pool."""
    from panopticapi.evaluation import pq_compute_single_core

    with open(data.gt_json) as f:
        gt_json = json.load(f)
    with open(data.pred_json) as f:
        pred_json = json.load(f)
    categories = {c["id"]: c for c in gt_json["categories"]}
    preds = {a["image_id"]: a for a in pred_json["annotations"]}
    matched = [(a, preds[a["image_id"]]) for a in gt_json["annotations"]]
    return pq_compute_single_core(0, matched, data.gt_dir, data.pred_dir, categories)


def _copy_outputs(outputs: List[Dict]) -> List[Dict]:
    """The outputs with copied segments_info dicts (the id map tensors are shared, not modified)."""
    return [
        {"panoptic_seg": (y["panoptic_seg"][0], [dict(s) for s in y["panoptic_seg"][1]])}
        for y in outputs
    ]


def _run_evaluator(
    make: Callable[[], Any], data: BenchmarkSet, outputs: List[List[Dict]]
) -> Dict[str, float]:
    evaluator = make()
    evaluator.reset()
    for x, y in zip(data.inputs, outputs.pop()):
        evaluator.process([x], [y])
    return evaluator.evaluate()["panoptic_seg"]


class StandInModel(torch.nn.Module):
    """Returns each image's prepared prediction after waiting ``seconds`` (the host thread blocks as
    it does while a GPU runs the forward; other threads run meanwhile)."""

    def __init__(self, outputs_by_id: Dict[Any, Dict], seconds: float):
        super().__init__()
        self.outputs_by_id = outputs_by_id
        self.seconds = seconds

    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        time.sleep(self.seconds)
        return [self.outputs_by_id[x["image_id"]] for x in batched_inputs]


def _run_in_inference_loop(
    make: Callable[[], Any], data: BenchmarkSet, outputs: List[List[Dict]], model_seconds: float
) -> Dict[str, float]:
    model = StandInModel(
        {x["image_id"]: y for x, y in zip(data.inputs, outputs.pop())}, model_seconds
    )
    results = inference_on_dataset(model, [[x] for x in data.inputs], make())
    return results.get("panoptic_seg", {})


def benchmark(data: BenchmarkSet, repeat: int, skip_d2: bool, model_ms: float) -> Dict[str, Any]:
    """Seconds per image of each method (best of ``repeat``) and, with ``model_ms``, seconds each
    evaluator adds per image inside ``inference_on_dataset``; checks that all agree."""
    from panopticapi.evaluation import pq_compute

    # Fresh segments_info per run, copied outside the timed region (D2's evaluator pops "isthing").
    outputs = [_copy_outputs(data.outputs) for _ in range(repeat * 13 + 2)]
    timings, results, added = {}, {}, {}

    with contextlib.redirect_stdout(io.StringIO()):
        timings["pq_compute"], ref = _best_time(
            lambda: pq_compute(data.gt_json, data.pred_json, data.gt_dir, data.pred_dir), repeat
        )
    results["pq_compute"] = {
        "PQ": 100 * ref["All"]["pq"],
        "SQ": 100 * ref["All"]["sq"],
        "RQ": 100 * ref["All"]["rq"],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        timings["pq_compute 1 core"], _ = _best_time(lambda: _pq_compute_one_core(data), repeat)
    d2 = lambda: COCOPanopticEvaluator(data.name)  # noqa: E731
    fast = lambda: FastCOCOPanopticEvaluator(data.name)  # noqa: E731
    fast_inline = lambda: FastCOCOPanopticEvaluator(data.name, num_workers=0)  # noqa: E731
    if not skip_d2:
        timings["d2"], results["d2"] = _best_time(lambda: _run_evaluator(d2, data, outputs), repeat)
    timings["fast cold"], results["fast cold"] = _best_time(
        lambda: _run_evaluator(fast, data, outputs), repeat, before=GROUND_TRUTH_CACHE.clear
    )
    timings["fast cold 1 thread"], results["fast cold 1 thread"] = _best_time(
        lambda: _run_evaluator(fast_inline, data, outputs), repeat, before=GROUND_TRUTH_CACHE.clear
    )
    _run_evaluator(fast, data, outputs)
    timings["fast warm"], results["fast warm"] = _best_time(
        lambda: _run_evaluator(fast, data, outputs), repeat
    )
    timings["fast warm 1 thread"], results["fast warm 1 thread"] = _best_time(
        lambda: _run_evaluator(fast_inline, data, outputs), repeat
    )

    if model_ms:
        seconds = model_ms / 1000
        loop = {}
        loop["no evaluator"], _ = _best_time(
            lambda: _run_in_inference_loop(lambda: DatasetEvaluators([]), data, outputs, seconds),
            repeat,
        )
        if not skip_d2:
            loop["d2"], results["d2 in loop"] = _best_time(
                lambda: _run_in_inference_loop(d2, data, outputs, seconds), repeat
            )
        loop["fast cold"], results["fast cold in loop"] = _best_time(
            lambda: _run_in_inference_loop(fast, data, outputs, seconds),
            repeat,
            before=GROUND_TRUTH_CACHE.clear,
        )
        loop["fast warm"], results["fast warm in loop"] = _best_time(
            lambda: _run_in_inference_loop(fast, data, outputs, seconds), repeat
        )
        added = {
            k: (v - loop["no evaluator"]) / data.num_images
            for k, v in loop.items()
            if k != "no evaluator"
        }
        added["model"] = loop["no evaluator"] / data.num_images

    for method, res in results.items():
        for key in ("PQ", "SQ", "RQ"):
            if abs(res[key] - results["pq_compute"][key]) > 1e-9:
                raise RuntimeError(
                    f"{method} gives {key} {res[key]} but pq_compute {results['pq_compute'][key]}"
                )
    return {
        "PQ": results["pq_compute"]["PQ"],
        "added": added,
        **{k: v / data.num_images for k, v in timings.items()},
    }


def print_report(data: BenchmarkSet, per_image: Dict[str, Any]) -> None:
    print(
        f"\n{data.title}: {data.num_images} images of {data.height}x{data.width}, PQ "
        f"{per_image['PQ']:.2f} "
        "(identical for every method)"
    )
    print(f"{'method':<20} {'ms/image':>9}")
    ours_methods = ("fast cold", "fast cold 1 thread", "fast warm", "fast warm 1 thread")
    for method in ("d2", "pq_compute", "pq_compute 1 core") + ours_methods:
        if method in per_image:
            print(f"{method:<20} {1000 * per_image[method]:9.2f}")
    for ours in ours_methods:
        ratios = [
            f"pq_compute / {ours} = {per_image['pq_compute'] / per_image[ours]:.1f}x",
            f"pq_compute 1 core / {ours} = {per_image['pq_compute 1 core'] / per_image[ours]:.1f}x",
        ]
        if "d2" in per_image:
            ratios.append(f"d2 / {ours} = {per_image['d2'] / per_image[ours]:.1f}x")
        print("  " + ", ".join(ratios))
    added = per_image["added"]
    if added:
        print(
            f"inside inference_on_dataset, stand-in model {1000 * added['model']:.1f} ms/image; "
            "time each evaluator adds:"
        )
        print(f"{'method':<20} {'ms/image':>9}")
        for method in ("d2", "fast cold", "fast warm"):
            if method in added:
                print(f"{method:<20} {1000 * added[method]:9.2f}")
        for ours in ("fast cold", "fast warm"):
            if added[ours] <= 0:  # below the timing noise of the loop
                print(f"  {ours} (added) is below the timing noise")
                continue
            line = f"  pq_compute / {ours} (added) = {per_image['pq_compute'] / added[ours]:.1f}x"
            if "d2" in added:
                line += f", d2 (added) / {ours} (added) = {added['d2'] / added[ours]:.1f}x"
            print(line)


def main(argv=None) -> None:
    args = parse_args(argv)
    # The evaluators' result tables would flood the output; restored on return (main is also
    # called in process, by tests).
    previous_disable, previous_threads = logging.root.manager.disable, torch.get_num_threads()
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    root = args.keep or tempfile.mkdtemp(prefix="benchmark_evaluation_")
    if args.keep:
        os.makedirs(root)
    print(
        f"{os.cpu_count()} CPUs (pq_compute uses a pool of that many processes; the fast "
        f"evaluator 2 threads by default); best of {args.repeat} runs"
    )
    try:
        sets = []
        if args.copies:
            sets.append(coco_sample_set(root, args.copies, rng))
        if args.synthetic:
            sets.append(synthetic_set(root, args.synthetic, tuple(args.size), rng))
        for data in sets:
            print_report(data, benchmark(data, args.repeat, args.skip_d2, args.model_ms))
    finally:
        logging.disable(previous_disable)
        torch.set_num_threads(previous_threads)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
