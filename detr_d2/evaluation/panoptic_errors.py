"""Panoptic error analysis: one cause for every false positive and false negative of PQ, and the PQ
that fixing each cause would add (an oracle, as TIDE does for detection AP).

It reads the evaluator's matching (:class:`.panoptic_matching.ImageMatch`), so TP/FP/FN are exactly
PQ's. Overlaps: ``IoU`` is panopticapi's (``union = pred + gt - inter - pred ∩ VOID``); a segment
*lies in* another when more than half of its pixels (a prediction: its pixels outside VOID) are in
it. Non-crowd GT segments only. The rules, first that applies wins:

False positive ``p`` (class ``c``):
  1. ``wrong_class``: IoU > 0.5 with a GT of another class of the same kind (thing/stuff);
  2. ``thing_stuff``: IoU > 0.5 with a GT of the other kind (a thing taken for stuff or back);
  3. ``merge``: two or more GT segments of class ``c`` lie in ``p``;
  4. ``duplicate``: ``p`` lies in a GT of class ``c`` that another prediction matches;
  5. ``split``: ``p`` lies in an unmatched GT of class ``c`` in which another class-``c``
     prediction also lies;
  6. ``poor_mask``: 0.1 < IoU <= 0.5 with a GT of class ``c`` (near miss);
  7. ``class_and_mask``: 0.1 < IoU <= 0.5 with a GT of another class;
  8. ``background``: IoU <= 0.1 with every GT segment.
False negative ``g`` (class ``c``):
  1./2. ``wrong_class`` / ``thing_stuff``: as above, with a prediction of another class;
  3. ``merge``: ``g`` lies in a class-``c`` prediction in which another class-``c`` GT also lies;
  4. ``split``: two or more class-``c`` predictions lie in ``g``;
  5. ``poor_mask``: 0.1 < IoU <= 0.5 with a class-``c`` prediction;
  6. ``class_and_mask``: 0.1 < IoU <= 0.5 with a prediction of another class;
  7. ``missed``: IoU <= 0.1 with every prediction.
Predictions PQ ignores (more than half in VOID + crowd) are counted as ``ignored_crowd_void``.

Oracle (per cause, on the dataset's per-class sums, PQ recomputed exactly by
:func:`.panoptic_quality.summarize_pq_stats`): a fixed FP is removed; a fixed FN becomes a TP
whose IoU is that of the wrongly classified prediction for ``wrong_class`` / ``thing_stuff`` (the
mask was right; that prediction's FP is removed by the same fix) and 1 otherwise (the mask replaced
by the ground truth, as TIDE replaces the box).
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from .panoptic_matching import ImageMatch
from .panoptic_quality import VOID, PQStats, summarize_pq_stats

__all__ = [
    "FP_CAUSES",
    "FN_CAUSES",
    "CAUSES",
    "ImageErrors",
    "classify_errors",
    "oracle_stats",
    "image_pq_lost",
    "summarize_oracles",
]

FP_CAUSES = (
    "wrong_class",
    "thing_stuff",
    "merge",
    "duplicate",
    "split",
    "poor_mask",
    "class_and_mask",
    "background",
)
FN_CAUSES = (
    "wrong_class",
    "thing_stuff",
    "merge",
    "split",
    "poor_mask",
    "class_and_mask",
    "missed",
)
CAUSES = tuple(dict.fromkeys(FP_CAUSES + FN_CAUSES))
_RELABEL = ("wrong_class", "thing_stuff")
MATCH_IOU = 0.5
OVERLAP_IOU = 0.1


@dataclass
class ImageErrors:
    """Causes of one image's errors.

    ``fp``: ``{pred id: (cause, GT id or None)}``; ``fn``: ``{GT id: (cause, pred id or None)}``
    (the segment the rule looked at); ``deltas``: ``{cause: PQStats}`` with the changes that cause's
    oracle makes to the per-class sums; ``ignored``: predictions PQ ignores (VOID/crowd);
    ``crowd``: crowd GT segments.
    """

    fp: Dict[int, Tuple[str, Optional[int]]] = field(default_factory=dict)
    fn: Dict[int, Tuple[str, Optional[int]]] = field(default_factory=dict)
    deltas: Dict[str, PQStats] = field(default_factory=dict)
    ignored: int = 0
    crowd: int = 0

    def delta(self, cause: str) -> PQStats:
        if cause not in self.deltas:
            self.deltas[cause] = PQStats()
        return self.deltas[cause]


def _kind(categories: Mapping[int, Mapping[str, Any]], category_id: int) -> bool:
    return categories[category_id]["isthing"] == 1


def classify_errors(match: ImageMatch, categories: Mapping[int, Mapping[str, Any]]) -> ImageErrors:
    """Give each FP and FN of ``match`` its cause (module docstring) and the oracle changes."""
    out = ImageErrors(ignored=len(match.ignored), crowd=len(match.crowd))
    gt_list = [g for g, info in match.gt_segments.items() if info["iscrowd"] != 1]
    pred_list = list(match.pred_segments)
    if not match.false_positives and not match.false_negatives:
        return out
    row = {int(g): i for i, g in enumerate(match.gt_ids.tolist())}
    col = {int(p): j for j, p in enumerate(match.pred_ids.tolist())}
    # Dense (G, P) intersections of the non-crowd GT and the predictions (absent ids: 0 pixels).
    rows = np.array([row.get(g, -1) for g in gt_list], dtype=np.int64)
    cols = np.array([col.get(p, -1) for p in pred_list], dtype=np.int64)
    padded = np.zeros((match.counts.shape[0] + 1, match.counts.shape[1] + 1), np.int64)
    padded[:-1, :-1] = match.counts
    inter = padded[rows][:, cols]
    pred_area = padded[:-1].sum(axis=0)[cols] if cols.size else np.zeros(0, np.int64)
    void_row = row.get(VOID)
    void = padded[void_row, cols] if void_row is not None else np.zeros(len(cols), np.int64)
    gt_pixels = padded[rows].sum(axis=1)  # pixels of each GT in the map
    gt_json_area = np.array([match.gt_segments[g]["area"] for g in gt_list], dtype=np.int64)
    union = pred_area[None, :] + gt_json_area[:, None] - inter - void[None, :]
    iou = np.where(inter > 0, inter / np.maximum(union, 1), 0.0)
    pred_inside = inter > 0.5 * np.maximum(pred_area - void, 1)[None, :]  # pred lies in GT
    gt_inside = inter > 0.5 * np.maximum(gt_pixels, 1)[:, None]  # GT lies in pred
    gt_cat = np.array([match.gt_segments[g]["category_id"] for g in gt_list])
    pred_cat = np.array([match.pred_segments[p]["category_id"] for p in pred_list])
    same = np.equal.outer(gt_cat, pred_cat).reshape(len(gt_list), len(pred_list))  # same class
    # Per-pair tables, then per-segment summaries (first maximum on ties, as argmax).
    other_iou = np.where(same, 0.0, iou)
    same_iou = np.where(same, iou, 0.0)
    inside_same = pred_inside & same  # prediction j lies in GT i of its class
    holds_same = gt_inside & same  # GT i lies in prediction j of its class
    gts_in_pred = holds_same.sum(axis=0)  # (P,) class-c GT segments lying in prediction j
    preds_in_gt = inside_same.sum(axis=1)  # (G,) class-c predictions lying in GT i
    merging = gts_in_pred >= 2
    matched_gt = {g for g, _, _ in match.matches}
    matched_row = np.array([g in matched_gt for g in gt_list], dtype=bool)
    gi = {g: i for i, g in enumerate(gt_list)}
    pj = {p: j for j, p in enumerate(pred_list)}

    def best(table: np.ndarray, axis: int) -> Tuple[np.ndarray, np.ndarray]:
        if table.shape[axis] == 0:
            n = table.shape[1 - axis]
            return np.zeros(n), np.zeros(n, dtype=np.int64)
        return table.max(axis=axis), table.argmax(axis=axis)

    def relabel_cause(category_id: int, other_category: int) -> str:
        same_kind = _kind(categories, category_id) == _kind(categories, other_category)
        return "wrong_class" if same_kind else "thing_stuff"

    other_max, other_arg = best(other_iou, 0)
    same_max, same_arg = best(same_iou, 0)
    for p in match.false_positives:
        j = pj[p]
        c = int(pred_cat[j])
        ref: Optional[int] = None
        host = int(np.argmax(inside_same[:, j])) if inside_same[:, j].any() else -1
        if other_max[j] > MATCH_IOU:
            ref = gt_list[int(other_arg[j])]
            cause = relabel_cause(c, int(match.gt_segments[ref]["category_id"]))
        elif merging[j]:
            cause, ref = "merge", gt_list[int(np.argmax(holds_same[:, j]))]
        elif host >= 0 and matched_row[host]:
            cause, ref = "duplicate", gt_list[host]
        elif host >= 0 and preds_in_gt[host] >= 2:
            cause, ref = "split", gt_list[host]
        elif same_max[j] > OVERLAP_IOU:
            cause, ref = "poor_mask", gt_list[int(same_arg[j])]
        elif other_max[j] > OVERLAP_IOU:
            cause, ref = "class_and_mask", gt_list[int(other_arg[j])]
        else:
            cause = "background"
        out.fp[p] = (cause, ref)
        out.delta(cause).add(c, fp=-1)

    other_max, other_arg = best(other_iou, 1)
    same_max, same_arg = best(same_iou, 1)
    for g in match.false_negatives:
        i = gi[g]
        c = int(gt_cat[i])
        ref = None
        fixed_iou = 1.0
        merged_into = holds_same[i] & merging  # class-c predictions g lies in, holding 2+ GTs
        if other_max[i] > MATCH_IOU:
            j = int(other_arg[i])
            ref, fixed_iou = pred_list[j], float(iou[i, j])
            cause = relabel_cause(c, int(pred_cat[j]))
        elif merged_into.any():
            cause, ref = "merge", pred_list[int(np.argmax(merged_into))]
        elif preds_in_gt[i] >= 2:
            cause, ref = "split", pred_list[int(np.argmax(inside_same[i]))]
        elif same_max[i] > OVERLAP_IOU:
            cause, ref = "poor_mask", pred_list[int(same_arg[i])]
        elif other_max[i] > OVERLAP_IOU:
            cause, ref = "class_and_mask", pred_list[int(other_arg[i])]
        else:
            cause = "missed"
        out.fn[g] = (cause, ref)
        out.delta(cause).add(c, iou=fixed_iou, tp=1, fn=-1)
    return out


def oracle_stats(total: PQStats, delta: PQStats) -> PQStats:
    """``total`` with an oracle's changes applied (a new object)."""
    fixed = PQStats()
    fixed += total
    fixed += delta
    return fixed


def _image_pq(stats: PQStats) -> float:
    """PQ of one image alone; 1 for an image with no segment at all (nothing to get wrong)."""
    values = [
        iou / (tp + 0.5 * fp + 0.5 * fn)
        for iou, tp, fp, fn in stats.per_category.values()
        if tp + fp + fn > 0
    ]
    return float(np.mean(values)) if values else 1.0


def image_pq_lost(stats: PQStats, errors: ImageErrors) -> float:
    """PQ (%) of the image alone with all its errors fixed minus its PQ (0 without errors)."""
    if not errors.fp and not errors.fn:
        return 0.0
    fixed = oracle_stats(stats, PQStats())
    for delta in errors.deltas.values():
        fixed += delta
    return 100.0 * (_image_pq(fixed) - _image_pq(stats))


def summarize_oracles(
    total: PQStats,
    deltas: Mapping[str, PQStats],
    categories: Mapping[int, Mapping[str, Any]],
    fixed: Optional[Dict[str, Dict[str, Any]]] = None,
) -> Dict[str, Dict[str, Optional[float]]]:
    """``{cause | "all": {"PQ", "PQ_gain", "PQ_th_gain", "PQ_st_gain"}}`` in percent (None where
    a group has no categories): PQ with that cause fixed, recomputed exactly. ``fixed``: if given,
    filled with ``{cause | "base" | "all": summarize_pq_stats(...)}`` (per class included)."""
    fixed = {} if fixed is None else fixed
    fixed["base"] = base = summarize_pq_stats(total, categories)
    everything = PQStats()
    for delta in deltas.values():
        everything += delta
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for cause, delta in list(deltas.items()) + [("all", everything)]:
        fixed[cause] = summary = summarize_pq_stats(oracle_stats(total, delta), categories)
        entry: Dict[str, Optional[float]] = {"PQ": _pct(summary["All"]["pq"])}
        for group, key in (("All", "PQ_gain"), ("Things", "PQ_th_gain"), ("Stuff", "PQ_st_gain")):
            gain = summary[group]["pq"] - base[group]["pq"]
            entry[key] = _pct(gain)
        out[cause] = entry
    return out


def _pct(value: float) -> Optional[float]:
    return None if value != value else 100.0 * float(value)
