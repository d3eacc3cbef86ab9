"""PQ matching of one image, exactly as ``panopticapi.evaluation.pq_compute_single_core``.

:func:`match_image` takes an image's pair counts (:func:`.panoptic_quality.pair_intersections`) and
returns the whole matching (:class:`ImageMatch`: true positives with their IoU, false negatives,
false positives, predictions ignored in VOID/crowd) and its :class:`.panoptic_quality.PQStats`; the
evaluator sums the statistics and the error analysis (:mod:`.panoptic_errors`) reads the matching.
The rules are listed in :mod:`.panoptic_quality`.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from .panoptic_quality import VOID, PQStats

__all__ = ["ImageMatch", "image_pq_stats", "match_image"]


@dataclass
class ImageMatch:
    """PQ matching of one image (panopticapi's rules), as :func:`match_image` found it.

    Segment ids are the map ids; ``gt_segments`` / ``pred_segments`` are ``{id: segments_info
    entry}``. ``matches``: ``(gt id, pred id, IoU)`` true positives; ``false_negatives``: unmatched
    non-crowd GT ids; ``false_positives``: unmatched prediction ids counted as FP; ``ignored``:
    unmatched prediction ids not counted because more than half of them lies in VOID + the crowd
    region of their category; ``crowd``: ``{category id: crowd GT id}`` (the last one, as
    panopticapi). ``gt_ids`` (S,), ``pred_ids`` (P,), ``counts`` (S, P) are
    :func:`pair_intersections`' result; ``void_counts`` (P,) each prediction's pixels in VOID.
    ``stats``: the image's :class:`PQStats`.
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    counts: np.ndarray
    gt_segments: Dict[int, Mapping[str, Any]]
    pred_segments: Dict[int, Mapping[str, Any]]
    void_counts: np.ndarray
    matches: List[Tuple[int, int, float]]
    false_negatives: List[int]
    false_positives: List[int]
    ignored: List[int]
    crowd: Dict[Any, int]
    stats: PQStats


def image_pq_stats(
    gt_ids: np.ndarray,
    pred_ids: np.ndarray,
    counts: np.ndarray,
    gt_segments_info: Sequence[Mapping[str, Any]],
    pred_segments_info: Sequence[Mapping[str, Any]],
    categories: Mapping[int, Any],
    image_id: Any = None,
) -> PQStats:
    """PQ statistics of one image from its pair counts: :func:`match_image`'s ``stats``."""
    return match_image(
        gt_ids, pred_ids, counts, gt_segments_info, pred_segments_info, categories, image_id
    ).stats


def match_image(
    gt_ids: np.ndarray,
    pred_ids: np.ndarray,
    counts: np.ndarray,
    gt_segments_info: Sequence[Mapping[str, Any]],
    pred_segments_info: Sequence[Mapping[str, Any]],
    categories: Mapping[int, Any],
    image_id: Any = None,
) -> ImageMatch:
    """PQ matching and statistics of one image from its pair counts (see
    :func:`pair_intersections`).

    ``gt_segments_info`` / ``pred_segments_info``: COCO panoptic ``segments_info`` with *dataset*
    category ids (GT entries need ``id``, ``category_id``, ``iscrowd``, ``area``; predictions
    ``id``, ``category_id``). Raises ``KeyError`` on the same inconsistencies as panopticapi (a
    segment id in the map but not in ``segments_info`` or vice versa, an unknown category id).
    """
    stats = PQStats()
    gt_segms = {int(el["id"]): el for el in gt_segments_info}
    pred_segms = {int(el["id"]): el for el in pred_segments_info}

    # Prediction sanity checks and areas (pixel counts), like panopticapi.
    pred_areas_all = counts.sum(axis=0)
    pred_area: Dict[int, int] = {}
    pred_col: Dict[int, int] = {}
    for col, (label, area) in enumerate(zip(pred_ids.tolist(), pred_areas_all.tolist())):
        if label not in pred_segms:
            if label == VOID:
                continue
            raise KeyError(
                f"In the image with ID {image_id} segment with ID {label} is presented in the "
                "prediction map and not presented in its segments_info."
            )
        pred_area[label] = area
        pred_col[label] = col
        category_id = pred_segms[label]["category_id"]
        if category_id not in categories:
            raise KeyError(
                f"In the image with ID {image_id} segment with ID {label} has unknown category_id "
                f"{category_id} (not among the ground-truth categories)."
            )
    missing = [label for label in pred_segms if label not in pred_area]
    if missing:
        raise KeyError(
            f"In the image with ID {image_id} the following segment IDs {missing} are presented in "
            "segments_info and not presented in the prediction map."
        )

    gt_row = {label: row for row, label in enumerate(gt_ids.tolist())}
    void_row = gt_row.get(VOID)
    void_counts = counts[void_row] if void_row is not None else np.zeros(pred_ids.size, np.int64)

    # Matching: candidate pairs in (gt id, pred id) ascending order, as panopticapi's np.unique.
    gt_matched = set()
    pred_matched = set()
    matches: List[Tuple[int, int, float]] = []
    rows, cols = np.nonzero(counts)
    for row, col, intersection in zip(rows.tolist(), cols.tolist(), counts[rows, cols].tolist()):
        gt_label = int(gt_ids[row])
        pred_label = int(pred_ids[col])
        gt_info = gt_segms.get(gt_label)
        if gt_info is None or pred_label not in pred_segms:
            continue
        if gt_info["iscrowd"] == 1:
            continue
        if gt_info["category_id"] != pred_segms[pred_label]["category_id"]:
            continue
        union = pred_area[pred_label] + gt_info["area"] - intersection - int(void_counts[col])
        iou = np.int64(intersection) / np.int64(union)
        if iou > 0.5:
            stats.add(gt_info["category_id"], iou=float(iou), tp=1)
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)
            matches.append((gt_label, pred_label, float(iou)))

    # False negatives; remember the crowd segment of each category (the last one wins).
    crowd_labels: Dict[Any, int] = {}
    false_negatives: List[int] = []
    for gt_label, gt_info in gt_segms.items():
        if gt_label in gt_matched:
            continue
        if gt_info["iscrowd"] == 1:
            crowd_labels[gt_info["category_id"]] = gt_label
            continue
        stats.add(gt_info["category_id"], fn=1)
        false_negatives.append(gt_label)

    false_positives: List[int] = []
    ignored: List[int] = []
    # False positives, ignoring predictions mostly (> 0.5) in VOID + same-category crowd.
    for pred_label, pred_info in pred_segms.items():
        if pred_label in pred_matched:
            continue
        col = pred_col[pred_label]
        intersection = int(void_counts[col])
        crowd_label = crowd_labels.get(pred_info["category_id"])
        if crowd_label is not None and crowd_label in gt_row:
            intersection += int(counts[gt_row[crowd_label], col])
        if intersection / pred_area[pred_label] > 0.5:
            ignored.append(pred_label)
            continue
        stats.add(pred_info["category_id"], fp=1)
        false_positives.append(pred_label)
    return ImageMatch(
        gt_ids,
        pred_ids,
        counts,
        gt_segms,
        pred_segms,
        void_counts,
        matches,
        false_negatives,
        false_positives,
        ignored,
        crowd_labels,
        stats,
    )
