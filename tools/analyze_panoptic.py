#!/usr/bin/env python
"""Panoptic error analysis of COCO-panoptic predictions: why PQ is lost (docs/error_analysis.md).

Every false positive and false negative of PQ gets one cause (wrong class, thing/stuff confusion,
merge, duplicate, split, poor mask, class and mask, background, missed), counted per class and
overall, with the PQ that fixing each cause would add (an oracle that recomputes PQ exactly). The
matching is the evaluator's (``detr_d2.evaluation.panoptic_matching``), so TP/FP/FN are PQ's.

Predictions are a COCO panoptic ``predictions.json`` + PNG folder, e.g. the ones the evaluator
writes with ``TEST.PANOPTIC_WRITE_PREDICTIONS True`` (or any model's, scored by ``pq_compute``):

    python tools/analyze_panoptic.py \\
        --gt-json datasets/detr_d2_quickstart/panoptic_val.json \\
        --gt-root datasets/detr_d2_quickstart/panoptic_val \\
        --images datasets/detr_d2_quickstart/val \\
        --predictions output/quickstart/inference/detr_quickstart_val/predictions.json \\
        --output output/quickstart/error_analysis

Writes ``panoptic_errors.json``, ``panoptic_errors_pq_lost.png`` (chart) and
``panoptic_errors_worst/`` (the ``--worst`` images with the most PQ lost: image | ground truth |
prediction | errors) to ``--output`` (new or empty unless ``--overwrite``), and prints the table.
Images are read one at a time: memory does not grow with the dataset.
"""

import argparse
import os
import sys
from typing import Any, Dict

from tqdm import tqdm

from detr_d2.data.panoptic_io import read_json, read_panoptic_ids, require_keys
from detr_d2.evaluation.panoptic_error_analysis import PanopticErrorAnalysis
from detr_d2.evaluation.panoptic_error_report import categories_metadata, report_error_analysis
from detr_d2.evaluation.panoptic_errors import classify_errors
from detr_d2.evaluation.panoptic_ground_truth import PanopticGroundTruth
from detr_d2.evaluation.panoptic_matching import match_image
from detr_d2.evaluation.panoptic_quality import PQStats, pair_intersections, summarize_pq_stats
from detr_d2.evaluation.per_class_report import format_summary_table
from detr_d2.utils.atomic_io import refuse_overwrite, require_new_or_empty_folder
from detr_d2.utils.cli import run_tool, tool_parser


def build_parser() -> argparse.ArgumentParser:
    p = tool_parser(__doc__)
    p.add_argument("--gt-json", required=True, help="ground-truth COCO panoptic JSON")
    p.add_argument("--gt-root", required=True, help="folder of the ground-truth panoptic PNGs")
    p.add_argument("--predictions", required=True, help="predictions.json (COCO panoptic)")
    p.add_argument(
        "--pred-root",
        default=None,
        help="folder of the predicted PNGs (default: the JSON's name without .json, as pq_compute)",
    )
    p.add_argument(
        "--images", default=None, help="folder of the images (for the pictures; else gray)"
    )
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--worst", type=int, default=8, help="worst images to draw (default 8)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --output")
    return p


def _image_files(gt_json_data: Dict[str, Any]) -> Dict[Any, str]:
    return {im["id"]: im["file_name"] for im in gt_json_data.get("images", []) if "id" in im}


def run(args: argparse.Namespace) -> int:
    if args.worst < 0:
        raise ValueError(f"--worst must be >= 0, got {args.worst}")
    pred_root = args.pred_root or os.path.splitext(args.predictions)[0]
    for inp in (args.gt_json, args.gt_root, args.predictions, pred_root, args.images):
        refuse_overwrite(args.output, [inp] if inp else [])
    gt_data = read_json(args.gt_json, "ground-truth panoptic JSON")
    gt = PanopticGroundTruth(args.gt_json, args.gt_root, gt_data)
    preds = read_json(args.predictions, "predictions JSON")
    require_keys(preds, ("annotations",), args.predictions)
    if not os.path.isdir(pred_root):
        raise FileNotFoundError(f"prediction PNG folder not found: {pred_root} (--pred-root)")
    require_new_or_empty_folder(args.output, args.overwrite)
    image_files = _image_files(gt_data)

    analysis = PanopticErrorAnalysis(gt.categories, args.worst)
    per_image: Dict[Any, PQStats] = {}
    total = PQStats()
    for i, pred in enumerate(tqdm(preds["annotations"], desc="images", unit="img")):
        require_keys(pred, ("image_id", "file_name", "segments_info"), f"{args.predictions}: #{i}")
        ann = gt.by_image_id.get(pred["image_id"])
        if ann is None:  # pq_compute ignores predictions of images without ground truth
            continue
        if pred["image_id"] in per_image:
            raise ValueError(
                f"{args.predictions}: image_id {pred['image_id']} has several predictions"
            )
        ids = read_panoptic_ids(os.path.join(pred_root, pred["file_name"]), "prediction PNG")
        try:
            counts = pair_intersections(gt.id_map(ann, None), ids)
        except ValueError as e:
            raise ValueError(f"{pred['file_name']} (image {pred['image_id']}): {e}") from e
        match = match_image(
            *counts, ann["segments_info"], pred["segments_info"], gt.categories, pred["image_id"]
        )
        name = image_files.get(pred["image_id"])
        image = os.path.join(args.images, name) if args.images and name else None
        analysis.add(pred["image_id"], image, match, classify_errors(match, gt.categories), ids)
        per_image[pred["image_id"]] = match.stats
        total += match.stats
    gt.unpredicted_images(per_image, os.path.basename(args.gt_json))  # raises on a missing one
    print(format_summary_table(summarize_pq_stats(total, gt.categories)))
    report_error_analysis(
        analysis, total, gt, categories_metadata(gt.categories), args.output, print_fn=print
    )
    return 0


def main(argv=None) -> int:
    return run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
