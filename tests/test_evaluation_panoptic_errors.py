"""Panoptic error causes and oracle PQ gains on hand-built images, one cause at a time.

Every case is a 10 x 20 id map (0 = VOID). Expected counts and gains are worked out by hand in the
comments (PQ of a class = sum IoU / (TP + FP/2 + FN/2); PQ = mean over classes that appear).
"""

import numpy as np
import pytest

from detr_d2.evaluation.panoptic_errors import (
    FN_CAUSES,
    FP_CAUSES,
    classify_errors,
    image_pq_lost,
    summarize_oracles,
)
from detr_d2.evaluation.panoptic_matching import match_image
from detr_d2.evaluation.panoptic_quality import RunLengthIdMap, pair_intersections

CAT, DOG, SKY = 1, 2, 3
CATEGORIES = {
    CAT: {"id": CAT, "name": "cat", "isthing": 1},
    DOG: {"id": DOG, "name": "dog", "isthing": 1},
    SKY: {"id": SKY, "name": "sky", "isthing": 0},
}
H, W = 10, 20


def _gt(*segments):
    """segments: (id, category, (row slice, col slice), iscrowd) painted in order."""
    ids = np.zeros((H, W), np.int64)
    for seg_id, _, region, _ in segments:
        ids[region] = seg_id
    info = [
        {"id": s, "category_id": c, "iscrowd": crowd, "area": int((ids == s).sum())}
        for s, c, _, crowd in segments
    ]
    return ids, info


def _pred(*segments):
    ids = np.zeros((H, W), np.int32)
    for seg_id, _, region in segments:
        ids[region] = seg_id
    return ids, [{"id": s, "category_id": c} for s, c, _ in segments]


def _analyse(gt, pred):
    (gt_map, gt_info), (pred_map, pred_info) = gt, pred
    counts = pair_intersections(RunLengthIdMap.from_id_map(gt_map), pred_map)
    match = match_image(*counts, gt_info, pred_info, CATEGORIES)
    errors = classify_errors(match, CATEGORIES)
    # Every FP and FN has exactly one cause.
    _, tp, fp, fn = np.sum([match.stats.get(c) for c in CATEGORIES], axis=0)
    assert sorted(errors.fp) == sorted(match.false_positives) and len(errors.fp) == fp
    assert sorted(errors.fn) == sorted(match.false_negatives) and len(errors.fn) == fn
    assert all(c in FP_CAUSES for c, _ in errors.fp.values())
    assert all(c in FN_CAUSES for c, _ in errors.fn.values())
    return match, errors


def _causes(errors):
    return (
        sorted(c for c, _ in errors.fp.values()),
        sorted(c for c, _ in errors.fn.values()),
    )


def _gain(match, errors, cause):
    return summarize_oracles(match.stats, errors.deltas, CATEGORIES)[cause]["PQ_gain"]


ALL = slice(None)
TOP, BOTTOM = slice(0, 5), slice(5, 10)


def test_wrong_class_is_fixed_by_relabelling_with_its_iou():
    # GT cat = rows 0-4 (100 px); prediction dog on rows 0-3 (80 px): IoU 0.8, other class.
    match, errors = _analyse(_gt((1, CAT, (TOP, ALL), 0)), _pred((1, DOG, (slice(0, 4), ALL))))
    assert _causes(errors) == (["wrong_class"], ["wrong_class"])
    assert errors.fp[1] == ("wrong_class", 1) and errors.fn[1] == ("wrong_class", 1)
    # Before: cat 0/(0.5), dog 0/(0.5) -> PQ 0. Fixed: cat 0.8/1, dog gone -> PQ 80.
    assert _gain(match, errors, "wrong_class") == pytest.approx(80.0)
    assert image_pq_lost(match.stats, errors) == pytest.approx(80.0)


def test_thing_taken_for_stuff():
    match, errors = _analyse(_gt((1, CAT, (TOP, ALL), 0)), _pred((1, SKY, (TOP, ALL))))
    assert _causes(errors) == (["thing_stuff"], ["thing_stuff"])
    assert _gain(match, errors, "thing_stuff") == pytest.approx(100.0)  # IoU 1 once relabelled


def test_merge_of_two_ground_truths_one_matched():
    # GT cat A = rows 0-7 (160 px), cat B = rows 8-9 (40 px); one cat prediction over both:
    # IoU(A) = 160/200 = 0.8 -> TP; B (40 px, all in the prediction) -> FN "merge".
    gt = _gt((1, CAT, (slice(0, 8), ALL), 0), (2, CAT, (slice(8, 10), ALL), 0))
    match, errors = _analyse(gt, _pred((5, CAT, (ALL, ALL))))
    assert _causes(errors) == ([], ["merge"]) and errors.fn[2] == ("merge", 5)
    # Before: cat 0.8/(1 + 0.5) = 53.33; fixed: (0.8 + 1)/2 = 90 -> +36.67.
    assert _gain(match, errors, "merge") == pytest.approx(90.0 - 80.0 / 1.5)


def test_merge_of_two_ground_truths_unmatched():
    # Two cat halves of 100 px each, one prediction over both: IoU 0.5 each, not > 0.5.
    gt = _gt((1, CAT, (TOP, ALL), 0), (2, CAT, (BOTTOM, ALL), 0))
    match, errors = _analyse(gt, _pred((5, CAT, (ALL, ALL))))
    assert _causes(errors) == (["merge"], ["merge", "merge"])
    assert _gain(match, errors, "merge") == pytest.approx(100.0)  # 2 TPs of IoU 1, no FP


def test_duplicate_in_a_matched_ground_truth():
    # GT cat 200 px; prediction 1 = rows 0-7 (IoU 0.8, TP), prediction 2 = rows 8-9 (duplicate).
    gt = _gt((1, CAT, (ALL, ALL), 0))
    pred = _pred((1, CAT, (slice(0, 8), ALL)), (2, CAT, (slice(8, 10), ALL)))
    match, errors = _analyse(gt, pred)
    assert _causes(errors) == (["duplicate"], []) and errors.fp[2] == ("duplicate", 1)
    # Before: 0.8/(1 + 0.5) = 53.33; duplicate removed: 0.8/1 = 80.
    assert _gain(match, errors, "duplicate") == pytest.approx(80.0 - 80.0 / 1.5)


def test_split_into_two_predictions():
    # GT cat 200 px; two cat predictions of 100 px each (IoU 0.5: no match), both lie in it.
    gt = _gt((1, CAT, (ALL, ALL), 0))
    match, errors = _analyse(gt, _pred((1, CAT, (TOP, ALL)), (2, CAT, (BOTTOM, ALL))))
    assert _causes(errors) == (["split", "split"], ["split"])
    assert _gain(match, errors, "split") == pytest.approx(100.0)  # 0/(1 + 0.5) -> 1/1


def test_poor_mask_near_miss():
    # GT cat 200 px; one cat prediction of 40 px inside it: IoU 0.2.
    gt = _gt((1, CAT, (ALL, ALL), 0))
    match, errors = _analyse(gt, _pred((1, CAT, (ALL, slice(0, 4)))))
    assert _causes(errors) == (["poor_mask"], ["poor_mask"])
    assert _gain(match, errors, "poor_mask") == pytest.approx(100.0)


def test_class_and_mask_both_wrong():
    # GT cat 200 px; a dog prediction of 40 px inside it: IoU 0.2, other class.
    gt = _gt((1, CAT, (ALL, ALL), 0))
    match, errors = _analyse(gt, _pred((1, DOG, (ALL, slice(0, 4)))))
    assert _causes(errors) == (["class_and_mask"], ["class_and_mask"])
    # Fixed: the FN becomes a TP of IoU 1 and the dog FP goes: cat 1/1, dog gone -> 100.
    assert _gain(match, errors, "class_and_mask") == pytest.approx(100.0)


def test_background_and_missed():
    # GT: sky rows 0-8 (180 px), cat row 9 cols 0-9 (10 px), dog row 9 cols 10-19 (10 px).
    # Predictions: sky = rows 0-8 minus 9 px (171 px, IoU 0.95), a dog of 9 px in the sky
    # (IoU 9/180 = 0.05: background); nothing on the cat (missed) nor on the dog (missed).
    gt = _gt(
        (1, SKY, (slice(0, 9), ALL), 0),
        (2, CAT, (slice(9, 10), slice(0, 10)), 0),
        (3, DOG, (slice(9, 10), slice(10, 20)), 0),
    )
    pred = _pred((1, SKY, (slice(0, 9), ALL)), (2, DOG, (slice(0, 1), slice(0, 9))))
    match, errors = _analyse(gt, pred)
    assert _causes(errors) == (["background"], ["missed", "missed"])
    # Before: sky 0.95, cat 0/(0.5) = 0, dog 0/(0.5 + 0.5) = 0 -> 31.67.
    # background fixed: dog 0/(0.5) still 0 -> no gain; missed fixed: cat 1, dog 1/(1.5) -> 86.11.
    before = 95.0 / 3
    assert _gain(match, errors, "background") == pytest.approx(0.0)
    missed_fixed = (95.0 + 100.0 + 100.0 / 1.5) / 3
    assert _gain(match, errors, "missed") == pytest.approx(missed_fixed - before)
    assert _gain(match, errors, "all") == pytest.approx(100.0 * (0.95 + 1 + 1) / 3 - before)


def test_crowd_and_void_are_ignored_not_errors():
    # Crowd cat rows 0-4; a cat prediction in it (ignored); a dog prediction in VOID (ignored).
    gt = _gt((1, CAT, (TOP, ALL), 1))
    pred = _pred((1, CAT, (slice(0, 4), ALL)), (2, DOG, (BOTTOM, ALL)))
    match, errors = _analyse(gt, pred)
    assert _causes(errors) == ([], []) and errors.ignored == 2 and errors.crowd == 1


def test_prediction_where_no_ground_truth_segment_is_background():
    # Only a crowd segment is listed; the dog lies on GT pixels of an unlisted id (neither VOID nor
    # a segment): an FP with no GT to compare with.
    gt_map, gt_info = _gt((1, CAT, (TOP, ALL), 1))
    gt_map[BOTTOM, :] = 9
    match, errors = _analyse((gt_map, gt_info), _pred((2, DOG, (BOTTOM, ALL))))
    assert _causes(errors) == (["background"], []) and errors.fp[2] == ("background", None)
    # Fixed, no class is left to average: PQ is undefined (None in the report), not 100.
    assert _gain(match, errors, "background") is None
    assert image_pq_lost(match.stats, errors) == pytest.approx(100.0)  # image PQ 0 -> empty = 1
