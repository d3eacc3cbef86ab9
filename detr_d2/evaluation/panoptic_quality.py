"""Panoptic quality (PQ/SQ/RQ) statistics computed in process, exactly as panopticapi does.

This module mirrors ``panopticapi.evaluation.pq_compute_single_core`` rule by rule, but counts the
(ground-truth id, predicted id) pixel intersections on run-length encoded id maps instead of
writing, re-reading and ``np.unique``-sorting PNGs:

- GT id maps come from the COCO panoptic PNGs (``id = R + 256 G + 256^2 B``, read by
  :func:`detr_d2.data.panoptic_io.read_panoptic_ids` like ``rgb2id``);
  they are run-length encoded once (row-major) and can be cached between evaluations.
- Predicted id maps are integer arrays with the *dataset-format* segment ids; like
  ``panopticapi.utils.id2rgb`` (used by Detectron2 to write the PNG) they are taken modulo
  ``2**24``.
- VOID is GT id 0. GT segments are those listed in the GT ``segments_info`` (JSON ``area`` is used
  in the union, as panopticapi does); pixels of GT ids not listed there are neither VOID nor a
  segment.
- A (gt, pred) pair with the same category, a non-crowd GT and ``IoU > 0.5`` is a true positive,
  with ``union = pred_area + gt_json_area - intersection - |pred ∩ VOID|``.
- Unmatched non-crowd GT segments are false negatives; unmatched predictions are false positives
  unless more than half of their area lies in VOID plus the crowd region of their category (the
  *last* crowd segment of that category in ``segments_info``, exactly like panopticapi's dict).
- The matching itself (which uses these counts) is :mod:`.panoptic_matching`.
- Category ids here are *dataset* ids (the ``id`` of the GT JSON ``categories``).

Follows ``pq_compute`` in ``panopticapi/evaluation.py`` (cocodataset/panopticapi at 7bb4655).
"""

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Tuple

import numpy as np

__all__ = [
    "VOID",
    "ID_MODULUS",
    "PQStats",
    "RunLengthIdMap",
    "pair_intersections",
    "summarize_pq_stats",
    "categories_by_id",
]

VOID = 0
# id2rgb keeps 3 bytes per pixel: an id written to a panoptic PNG is read back modulo 2**24.
ID_MODULUS = 256**3
# Largest (GT segments x max predicted id) table counted directly, without sorting the ids.
_DIRECT_BINCOUNT_LIMIT = 1 << 20


class PQStats:
    """Per-category sums ``[iou, tp, fp, fn]`` keyed by dataset category id (panopticapi's
    PQStat)."""

    def __init__(self) -> None:
        self.per_category: Dict[int, List[float]] = {}

    def _entry(self, category_id: int) -> List[float]:
        entry = self.per_category.get(category_id)
        if entry is None:
            entry = self.per_category[category_id] = [0.0, 0, 0, 0]
        return entry

    def add(
        self, category_id: int, iou: float = 0.0, tp: int = 0, fp: int = 0, fn: int = 0
    ) -> None:
        entry = self._entry(int(category_id))
        entry[0] += iou
        entry[1] += tp
        entry[2] += fp
        entry[3] += fn

    def __iadd__(self, other: "PQStats") -> "PQStats":
        for category_id, (iou, tp, fp, fn) in other.per_category.items():
            self.add(category_id, iou, tp, fp, fn)
        return self

    def get(self, category_id: int) -> Tuple[float, int, int, int]:
        iou, tp, fp, fn = self.per_category.get(category_id, (0.0, 0, 0, 0))
        return float(iou), int(tp), int(fp), int(fn)

    @classmethod
    def from_panopticapi(cls, pq_stat: Any) -> "PQStats":
        """Convert a ``panopticapi.evaluation.PQStat`` into :class:`PQStats`."""
        out = cls()
        for category_id, cat in pq_stat.pq_per_cat.items():
            out.add(category_id, cat.iou, cat.tp, cat.fp, cat.fn)
        return out

    def to_dict(self) -> Dict[int, Dict[str, float]]:
        return {
            c: {"iou": float(v[0]), "tp": int(v[1]), "fp": int(v[2]), "fn": int(v[3])}
            for c, v in sorted(self.per_category.items())
        }


def summarize_pq_stats(
    stats: PQStats, categories: Mapping[int, Mapping[str, Any]]
) -> Dict[str, Any]:
    """PQ/SQ/RQ averages like ``panopticapi.evaluation.pq_compute``'s return value (fractions, not
    %).

    Returns ``{"All"|"Things"|"Stuff": {"pq","sq","rq","n"}, "per_class": {cat_id:
    {"pq","sq","rq"}}}``. Per category and per group the arithmetic is panopticapi's
    ``PQStat.pq_average``: categories with ``tp + fp + fn == 0`` (never in GT nor prediction) get
    0.0 and are not counted in ``n``. Where panopticapi would divide by ``n == 0`` (e.g. no stuff
    category appears), the group gets NaN instead of raising ``ZeroDivisionError``.
    """
    results: Dict[str, Any] = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        pq, sq, rq, n = 0, 0, 0, 0
        per_class: Dict[int, Dict[str, float]] = {}
        for label, label_info in categories.items():
            if isthing is not None and isthing != (label_info["isthing"] == 1):
                continue
            iou, tp, fp, fn = stats.get(label)
            if tp + fp + fn == 0:
                per_class[label] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            pq_class = iou / (tp + 0.5 * fp + 0.5 * fn)
            sq_class = iou / tp if tp != 0 else 0
            rq_class = tp / (tp + 0.5 * fp + 0.5 * fn)
            per_class[label] = {"pq": pq_class, "sq": sq_class, "rq": rq_class}
            pq += pq_class
            sq += sq_class
            rq += rq_class
        if n > 0:
            results[name] = {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}
        else:
            results[name] = {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "n": 0}
        if name == "All":
            results["per_class"] = per_class
    return results


def _index_dtype(n_pixels: int) -> type:
    return np.int32 if n_pixels < 2**31 else np.int64


def _starts_from_changes(change: np.ndarray) -> np.ndarray:
    """Run start indices (first is 0) from ``change[i] = flat[i + 1] != flat[i]`` (bool)."""
    changes = np.flatnonzero(change)
    starts = np.empty(changes.size + 1, dtype=_index_dtype(change.size + 1))
    starts[0] = 0
    np.add(changes, 1, out=starts[1:], casting="unsafe")
    return starts


@dataclass
class RunLengthIdMap:
    """Row-major run-length form of a (H, W) panoptic id map.

    ``run_starts``: (R,) flat index where each run starts (first is 0; int32, int64 for maps of
    2**31 pixels or more); ``run_labels``: (R,) index into ``ids`` (uint8 when S <= 256);
    ``ids``: (S,) sorted unique ids present in the map.
    """

    height: int
    width: int
    run_starts: np.ndarray
    run_labels: np.ndarray
    ids: np.ndarray

    @classmethod
    def from_id_map(cls, id_map: np.ndarray) -> "RunLengthIdMap":
        if id_map.ndim != 2 or id_map.size == 0:
            raise ValueError(f"expected a non-empty (H, W) id map, got shape {tuple(id_map.shape)}")
        flat = id_map.reshape(-1)
        starts = _starts_from_changes(flat[1:] != flat[:-1])
        ids, labels = np.unique(flat[starts], return_inverse=True)
        label_dtype = np.uint8 if ids.size <= 256 else np.int32
        return cls(
            int(id_map.shape[0]), int(id_map.shape[1]), starts, labels.astype(label_dtype), ids
        )

    @property
    def nbytes(self) -> int:
        return int(self.run_starts.nbytes + self.run_labels.nbytes + self.ids.nbytes)

    def to_id_map(self) -> np.ndarray:
        lengths = np.diff(np.append(self.run_starts.astype(np.int64), self.height * self.width))
        return np.repeat(self.ids[self.run_labels], lengths).reshape(self.height, self.width)


def pair_intersections(
    gt: RunLengthIdMap, pred_id_map: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel counts of every (GT id, predicted id) pair.

    Args:
        gt: run-length GT id map (H, W).
        pred_id_map: (H, W) integer array of predicted segment ids (taken modulo ``2**24``, as the
            PNG round trip of Detectron2's evaluator does).
    Returns:
        ``gt_ids`` (S,), ``pred_ids`` (P,) sorted unique ids (int64) and ``counts`` (S, P) int64
        with ``counts[i, j] = |{pixels: gt == gt_ids[i] and pred == pred_ids[j]}|``.
    """
    if pred_id_map.shape != (gt.height, gt.width):
        raise ValueError(
            f"prediction of shape {tuple(pred_id_map.shape)} does not match the ground truth "
            f"({gt.height}, {gt.width})"
        )
    if not np.issubdtype(pred_id_map.dtype, np.integer):
        raise TypeError(f"predicted panoptic ids must be integers, got dtype {pred_id_map.dtype}")
    flat = np.ascontiguousarray(pred_id_map).reshape(-1)
    n_pixels = flat.size
    # Elementary intervals: the union of GT and prediction run boundaries; each interval's GT run
    # is the running count of GT boundaries (cheaper than a search per interval).
    gt_boundary = np.zeros(n_pixels - 1, dtype=bool)
    gt_boundary[gt.run_starts[1:] - 1] = True
    change = flat[1:] != flat[:-1]
    change |= gt_boundary
    starts = _starts_from_changes(change)
    lengths = np.diff(starts, append=n_pixels)
    gt_run = np.zeros(starts.size, dtype=np.int64)
    np.cumsum(gt_boundary[starts[1:] - 1], out=gt_run[1:])
    gt_labels = gt.run_labels[gt_run].astype(np.int64)
    pred_values = flat[starts].astype(np.int64)
    n_gt = gt.ids.size
    if pred_values.min() < 0 or pred_values.max() >= ID_MODULUS:
        pred_values %= ID_MODULUS
    max_pred = int(pred_values.max())
    if n_gt * (max_pred + 1) <= _DIRECT_BINCOUNT_LIMIT:
        # Small ids (a model's 1..N): count into a dense (S, max_pred + 1) table, keep used columns.
        table = np.bincount(
            gt_labels * (max_pred + 1) + pred_values,
            weights=lengths,
            minlength=n_gt * (max_pred + 1),
        ).reshape(n_gt, max_pred + 1)
        pred_ids = np.flatnonzero(table.any(axis=0))
        counts = table[:, pred_ids]
    else:
        pred_ids, pred_labels = np.unique(pred_values, return_inverse=True)
        counts = np.bincount(
            gt_labels * pred_ids.size + pred_labels, weights=lengths, minlength=n_gt * pred_ids.size
        ).reshape(n_gt, pred_ids.size)
    # Weights are pixel counts (< 2**53): the float64 sums are exact integers.
    counts = counts.astype(np.int64)
    return gt.ids.astype(np.int64), pred_ids, counts


def categories_by_id(categories: Iterable[Mapping[str, Any]]) -> "OrderedDict[int, Dict[str, Any]]":
    """``{dataset category id: category dict}`` in JSON order, as panopticapi builds it."""
    return OrderedDict((el["id"], dict(el)) for el in categories)
