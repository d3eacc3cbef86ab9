"""Synthetic panoptic ground truth and randomly perturbed predictions (for evaluator
tests/benchmarks).

Id maps here are (H, W) integer arrays of COCO-panoptic segment ids (0 = VOID); ``segments_info``
entries carry *dataset* category ids. Predictions come out like a model's: ids renumbered 1..N
(int32) with ``{"id", "category_id"}`` entries.
"""

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "PERTURBATIONS",
    "perturb_prediction",
    "make_synthetic_panoptic_gt",
    "write_panoptic_json",
]

PERTURBATIONS = (
    "drop",
    "merge",
    "shift",
    "relabel",
    "void",
    "crowd_overlap",
    "extra",
    "noise",
)


def _random_box(rng: np.random.Generator, height: int, width: int, max_frac: float = 0.4):
    h = int(rng.integers(1, max(2, int(height * max_frac))))
    w = int(rng.integers(1, max(2, int(width * max_frac))))
    y = int(rng.integers(0, height - h + 1))
    x = int(rng.integers(0, width - w + 1))
    return slice(y, y + h), slice(x, x + w)


def perturb_prediction(
    gt_id_map: np.ndarray,
    gt_segments_info: Sequence[Mapping[str, Any]],
    category_ids: Sequence[int],
    rng: np.random.Generator,
    ops: Optional[Sequence[str]] = None,
) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """A prediction made from the ground truth by random edits.

    Args:
        gt_id_map: (H, W) GT ids (0 = VOID).
        gt_segments_info: GT ``segments_info`` (``id``, ``category_id``, ``iscrowd``).
        category_ids: dataset category ids a relabel/extra segment may use.
        rng: numpy random generator.
        ops: subset of :data:`PERTURBATIONS` to apply (each with probability 1/2); default all.
    Returns:
        ``(pred_id_map, segments_info)``: int32 (H, W) ids 1..N (0 = no prediction), and entries
        ``{"id", "category_id"}`` (dataset ids) for exactly the ids present in the map.
    """
    ops = PERTURBATIONS if ops is None else tuple(ops)
    unknown = set(ops) - set(PERTURBATIONS)
    if unknown:
        raise ValueError(f"unknown perturbations {sorted(unknown)}; choose from {PERTURBATIONS}")
    height, width = gt_id_map.shape
    pred = gt_id_map.astype(np.int64).copy()
    info: Dict[int, Dict[str, Any]] = {
        int(s["id"]): {"category_id": int(s["category_id"])} for s in gt_segments_info
    }
    pred[~np.isin(pred, list(info))] = 0  # unlisted GT ids are not predictions
    next_id = int(pred.max()) + 1

    def present() -> List[int]:
        return [i for i in np.unique(pred).tolist() if i != 0]

    def new_segment(category_id: int) -> int:
        nonlocal next_id
        info[next_id] = {"category_id": int(category_id)}
        next_id += 1
        return next_id - 1

    for op in ops:
        if rng.random() < 0.5:
            continue
        ids = present()
        if op == "drop" and ids:
            for sid in rng.choice(ids, size=min(len(ids), int(rng.integers(1, 4))), replace=False):
                pred[pred == sid] = 0
        elif op == "merge" and len(ids) >= 2:
            a, b = rng.choice(ids, size=2, replace=False)
            pred[pred == b] = a
        elif op == "shift" and ids:
            sid = int(rng.choice(ids))
            mask = pred == sid
            dy, dx = (int(v) for v in rng.integers(-max(1, height // 8), max(2, height // 8), 2))
            shifted = np.zeros_like(mask)
            ys = slice(max(dy, 0), height + min(dy, 0))
            xs = slice(max(dx, 0), width + min(dx, 0))
            yd = slice(max(-dy, 0), height + min(-dy, 0))
            xd = slice(max(-dx, 0), width + min(-dx, 0))
            shifted[ys, xs] = mask[yd, xd]
            pred[mask] = 0
            pred[shifted] = sid
        elif op == "relabel" and ids:
            sid = int(rng.choice(ids))
            info[sid]["category_id"] = int(rng.choice(list(category_ids)))
        elif op == "void":
            pred[_random_box(rng, height, width)] = 0
        elif op == "crowd_overlap":
            crowds = [s for s in gt_segments_info if s.get("iscrowd", 0) == 1]
            if crowds:
                crowd = crowds[int(rng.integers(len(crowds)))]
                mask = gt_id_map == crowd["id"]
                keep = np.zeros_like(mask)  # a box-shaped part of the crowd region
                keep[_random_box(rng, height, width, 1.0)] = True
                # Same category most of the time (the crowd-ignore rule applies), else a random one.
                cat = (
                    crowd["category_id"]
                    if rng.random() < 0.7
                    else int(rng.choice(list(category_ids)))
                )
                sid = new_segment(cat)
                pred[mask & keep] = sid
                if rng.random() < 0.5:  # spill outside the crowd region
                    pred[_random_box(rng, height, width, 0.2)] = sid
        elif op == "extra":
            for _ in range(int(rng.integers(1, 4))):
                pred[_random_box(rng, height, width, 0.3)] = new_segment(
                    rng.choice(list(category_ids))
                )
        elif op == "noise" and ids:
            box = _random_box(rng, height, width, 0.5)
            region = pred[box]
            flip = rng.random(region.shape) < 0.3
            region[flip] = rng.choice(ids + [0], size=int(flip.sum()))

    # Renumber like a model's output: 1..N in increasing order of the old ids.
    old_ids, inverse = np.unique(pred, return_inverse=True)
    new_ids = np.cumsum(old_ids != 0).astype(np.int32)
    new_ids[old_ids == 0] = 0
    out = new_ids[inverse].reshape(height, width)
    segments_info = [
        {"id": int(new), "category_id": info[int(old)]["category_id"]}
        for old, new in zip(old_ids.tolist(), new_ids.tolist())
        if old != 0
    ]
    return out, segments_info


def make_synthetic_panoptic_gt(
    rng: np.random.Generator,
    height: int,
    width: int,
    categories: Sequence[Mapping[str, Any]],
    num_things: int = 8,
    crowd_prob: float = 0.2,
    void_prob: float = 0.5,
    unlisted_id: bool = False,
    absent_segment: bool = False,
) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """Random COCO-panoptic ground truth: 1-3 stuff bands, rectangles/ellipses of things.

    Things become crowd with probability ``crowd_prob`` (several crowd segments of one category
    can occur), VOID boxes appear with ``void_prob``. ``unlisted_id`` adds pixels of an id missing
    from ``segments_info``; ``absent_segment`` lists a segment that has no pixels. Only categories
    drawn appear, so with many categories most never appear.
    Returns ``(id_map (H, W) uint32 with random RGB-style ids, segments_info)`` where entries have
    ``id``, ``category_id``, ``iscrowd``, ``area`` (pixel count), ``bbox`` (xywh pixels).
    """
    things = [c["id"] for c in categories if c["isthing"]]
    stuff = [c["id"] for c in categories if not c["isthing"]]
    id_map = np.zeros((height, width), dtype=np.uint32)
    seg_category: Dict[int, Tuple[int, int]] = {}
    used = {0}

    def fresh_id() -> int:
        while True:
            sid = int(rng.integers(1, 256**3))
            if sid not in used:
                used.add(sid)
                return sid

    if stuff:
        bounds = np.sort(rng.integers(0, height, size=int(rng.integers(0, 3))))
        edges = [0] + bounds.tolist() + [height]
        for y0, y1 in zip(edges[:-1], edges[1:]):
            if y1 > y0:
                sid = fresh_id()
                id_map[y0:y1] = sid
                seg_category[sid] = (int(rng.choice(stuff)), 0)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(num_things if things else 0):
        sid = fresh_id()
        box = _random_box(rng, height, width, 0.35)
        if rng.random() < 0.5:
            id_map[box] = sid
        else:
            cy = (box[0].start + box[0].stop) / 2
            cx = (box[1].start + box[1].stop) / 2
            ry = max(1.0, (box[0].stop - box[0].start) / 2)
            rx = max(1.0, (box[1].stop - box[1].start) / 2)
            id_map[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = sid
        seg_category[sid] = (int(rng.choice(things)), int(rng.random() < crowd_prob))
    if rng.random() < void_prob:
        id_map[_random_box(rng, height, width, 0.3)] = 0
    if unlisted_id:
        id_map[_random_box(rng, height, width, 0.2)] = fresh_id()

    segments_info = []
    listed = set(seg_category)
    ids, areas = np.unique(id_map, return_counts=True)
    for sid, area in zip(ids.tolist(), areas.tolist()):
        if sid not in listed:
            continue
        ys, xs = np.nonzero(id_map == sid)
        cat, crowd = seg_category[sid]
        segments_info.append(
            {
                "id": sid,
                "category_id": cat,
                "iscrowd": crowd,
                "area": int(area),
                "bbox": [
                    int(xs.min()),
                    int(ys.min()),
                    int(xs.max() - xs.min() + 1),
                    int(ys.max() - ys.min() + 1),
                ],
            }
        )
    if absent_segment and things:
        segments_info.append(
            {
                "id": fresh_id(),
                "category_id": int(rng.choice(things)),
                "iscrowd": 0,
                "area": 50,
                "bbox": [0, 0, 5, 10],
            }
        )
    order = rng.permutation(len(segments_info))
    return id_map, [segments_info[i] for i in order]


def write_panoptic_json(
    path: str,
    annotations: Sequence[Mapping[str, Any]],
    categories: Sequence[Mapping[str, Any]],
    images: Optional[Sequence[Mapping[str, Any]]] = None,
) -> None:
    """Write a COCO panoptic JSON (``images``, ``annotations``, ``categories``)."""
    if images is None:
        images = [
            {"id": a["image_id"], "file_name": os.path.splitext(a["file_name"])[0] + ".jpg"}
            for a in annotations
        ]
    with open(path, "w") as f:
        json.dump(
            {
                "images": list(images),
                "annotations": list(annotations),
                "categories": list(categories),
            },
            f,
        )
