#!/usr/bin/env python
"""Count duplicate thing segments, the "one object split into two segments" of the Visualizer
overlays, of a model on a registered panoptic dataset.

A predicted thing segment *matches* a ground-truth thing segment when their IoU is > 0.5 (PQ's
matching; any class). A predicted thing segment that matches nothing is a *duplicate* when more than
half of its pixels lie in a ground-truth thing that another predicted segment matches.

    python tools/count_duplicate_segments.py \\
        --config-file configs/quickstart/detr_r18_quickstart.yaml \\
        --dataset detr_quickstart_val --first 8 --opts MODEL.WEIGHTS \\
        output/quickstart/model_final.pth

Images are taken in file-name order (``make quickstart`` draws its overlays from the first 8).
Prints the ground-truth things, predicted things, matched and duplicate segments of the first
``--first`` images and of all images, then, with ``--per-image``, a line per image that has a
duplicate.
"""

import argparse
import sys
from typing import Dict, List, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog
from tqdm import tqdm

from detr_d2.config import get_detr_cfg
from detr_d2.data.dataset_mappers.detr_panoptic_dataset_mapper import read_image_checked
from detr_d2.data.panoptic_io import read_panoptic_ids
from detr_d2.evaluation.panoptic_quality import RunLengthIdMap, pair_intersections
from detr_d2.predictor import DetrPanopticPredictor
from detr_d2.utils.cli import run_tool, tool_parser


def build_parser() -> argparse.ArgumentParser:
    p = tool_parser(__doc__)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument(
        "--dataset", required=True, help="a registered panoptic dataset (e.g. detr_quickstart_val)"
    )
    p.add_argument(
        "--first", type=int, default=8, help="also report the first N images (default 8)"
    )
    p.add_argument("--per-image", action="store_true", help="list the images with duplicates")
    p.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ..."
    )
    return p


def match_and_duplicates(
    pred_ids: np.ndarray, pred_things: Sequence[int], gt_ids: np.ndarray, gt_things: Sequence[int]
) -> Tuple[int, int]:
    """(matched, duplicates) for one image: ``pred_ids`` / ``gt_ids`` (H, W) segment-id maps,
    ``pred_things`` / ``gt_things`` the ids of their thing segments (see the module docstring for
    the definitions). Pixel counts come from the evaluator's
    :func:`~detr_d2.evaluation.panoptic_quality.pair_intersections`."""
    if pred_ids.shape != gt_ids.shape:
        raise ValueError(
            f"prediction {pred_ids.shape} and ground truth {gt_ids.shape} differ in size"
        )
    gt_index, pred_index, counts = pair_intersections(RunLengthIdMap.from_id_map(gt_ids), pred_ids)
    row = {g: i for i, g in enumerate(gt_index.tolist())}
    col = {p: j for j, p in enumerate(pred_index.tolist())}
    gt_area, pred_area = counts.sum(1), counts.sum(0)

    def intersection(p: int, g: int) -> int:
        return int(counts[row[g], col[p]]) if g in row and p in col else 0

    def area(p: int) -> int:
        return int(pred_area[col[p]]) if p in col else 0

    matched: Dict[int, int] = {}  # predicted segment -> the ground-truth thing it matches
    for p in pred_things:
        for g in gt_things:
            inter = intersection(p, g)
            union = area(p) + (int(gt_area[row[g]]) if g in row else 0) - inter
            if inter / max(1, union) > 0.5:
                matched[p] = g  # IoU > 0.5 is unique on either side
    covered = set(matched.values())
    duplicates = sum(
        1
        for p in pred_things
        if p not in matched and any(intersection(p, g) > 0.5 * area(p) for g in covered)
    )
    return len(matched), duplicates


def _summary(name: str, rows: List[Tuple[str, int, int, int, int]]) -> str:
    a = np.array([r[1:] for r in rows], dtype=np.int64).reshape(-1, 4)
    return (
        f"{name}: {len(rows)} images, ground-truth things {a[:, 0].sum()}, predicted things "
        f"{a[:, 1].sum()}, "
        f"matched (IoU > 0.5) {a[:, 2].sum()}, duplicates {a[:, 3].sum()} (in "
        f"{int((a[:, 3] > 0).sum())} images)"
    )


def run(args: argparse.Namespace) -> int:
    cfg = get_detr_cfg(args.config_file, args.opts)
    predictor = DetrPanopticPredictor(cfg)  # registers DATASETS.REGISTER_FILES
    if args.dataset not in DatasetCatalog.list():
        raise KeyError(
            f"--dataset {args.dataset!r} is not registered (DATASETS.REGISTER_FILES or a "
            "built-in name)"
        )
    dicts = sorted(DatasetCatalog.get(args.dataset), key=lambda d: d["file_name"])
    if not dicts or "pan_seg_file_name" not in dicts[0]:
        raise ValueError(
            f"--dataset {args.dataset!r} has no panoptic ground truth (pan_seg_file_name)"
        )
    rows = []
    for d in tqdm(dicts, desc="images", unit="img"):
        ids, segments = predictor(read_image_checked(d["file_name"], "BGR"))["panoptic_seg"]
        gt_ids = read_panoptic_ids(d["pan_seg_file_name"])
        gt_things = [
            s["id"] for s in d["segments_info"] if s.get("isthing") and not s.get("iscrowd", 0)
        ]
        pred_things = [s["id"] for s in segments if s["isthing"]]
        matched, duplicates = match_and_duplicates(
            ids.cpu().numpy(), pred_things, gt_ids, gt_things
        )
        rows.append((d["file_name"], len(gt_things), len(pred_things), matched, duplicates))
    if args.first > 0:
        print(_summary(f"first {min(args.first, len(rows))}", rows[: args.first]))
    print(_summary("all", rows))
    if args.per_image:
        for f, g, p, m, dup in rows:
            if dup:
                print(
                    f"  {f}: ground-truth things {g}, predicted {p}, matched {m}, duplicates {dup}"
                )
    return 0


def main(argv=None) -> int:
    return run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
