"""DETR's PostProcessPanoptic as re-implemented in tests.utils.official_detr, on hand-built outputs
whose result follows step by step from ``PostProcessPanoptic`` in ``models/segmentation.py``
(facebookresearch/detr at 29901c5)."""

import torch

from tests.utils.official_detr import (
    PostProcessPanoptic,
    decode_panoptic_png,
    official_is_thing_map,
)

NUM_LOGITS = 251  # 250 slots (COCO panoptic ids) + no-object


def _logits(classes, high=12.0):
    """(Q, 251) logits whose argmax per query is ``classes[q]`` with a confident score."""
    logits = torch.zeros(len(classes), NUM_LOGITS)
    for q, c in enumerate(classes):
        logits[q, c] = high
    return logits


def _outputs(logits, masks):
    q = logits.shape[0]
    return {
        "pred_logits": logits[None],
        "pred_masks": masks[None],
        "pred_boxes": torch.full((1, q, 4), 0.5),
    }


def test_is_thing_map():
    m = official_is_thing_map()
    assert len(m) == 250 and m[1] and m[90] and not m[91] and not m[184] and not m[249]


def test_stuff_merge_small_segment_loop_and_renumbering():
    # kept queries: q0 thing (cat 1), q1 + q2 stuff (cat 184), q3 thing (cat 5, one cell);
    # q4 no-object and q5 (score ~0.5) are not kept.
    logits = _logits([1, 184, 184, 5, 250, 7])
    logits[5, 7], logits[5, 8] = 3.0, 3.0
    masks = torch.full((6, 8, 12), -5.0)
    masks[0, :, :4], masks[0, :, 8:], masks[0, :, 4:8] = 5.0, 3.0, 0.0
    masks[1, :, 4:8], masks[1, :, :4], masks[1, :, 8:] = 5.0, 0.0, 1.0
    masks[2, :, 8:] = 6.0
    masks[3, 0, 0] = 10.0
    post = PostProcessPanoptic(official_is_thing_map(), threshold=0.85)
    (pred,) = post(_outputs(logits, masks), [(8, 12)], [(16, 24)])
    # First pass: q2's pixels merge into q1 (area 0 -> dropped), q3 covers 4 target pixels (<= 4 ->
    # dropped). The recomputation (no merge) gives q2's old pixels to the argmax of q0/q1: q0.
    assert pred["segments_info"] == [
        {"id": 0, "isthing": True, "category_id": 1, "area": 256},
        {"id": 1, "isthing": False, "category_id": 184, "area": 128},
    ]
    ids = decode_panoptic_png(pred["png_string"])
    expected = torch.zeros(16, 24, dtype=torch.int32)
    expected[:, 8:16] = 1
    assert ids.shape == (16, 24)
    assert (ids == expected.numpy()).all()


def test_threshold_is_strict_and_no_object_is_dropped():
    logits = torch.zeros(2, NUM_LOGITS)
    logits[0, 1] = 9.0
    logits[1, 250] = 20.0  # confident no-object
    score = logits[0].softmax(-1).max().item()
    masks = torch.zeros(2, 4, 4)
    at = PostProcessPanoptic(official_is_thing_map(), threshold=score)
    below = PostProcessPanoptic(official_is_thing_map(), threshold=score - 1e-4)
    assert at(_outputs(logits, masks), [(4, 4)])[0]["segments_info"] == []
    assert below(_outputs(logits, masks), [(4, 4)])[0]["segments_info"] == [
        {"id": 0, "isthing": True, "category_id": 1, "area": 16}
    ]


def test_nothing_kept_gives_all_zero_map_and_no_segments():
    logits = _logits([250, 250])
    (pred,) = PostProcessPanoptic(official_is_thing_map())(
        _outputs(logits, torch.randn(2, 4, 6)), [(8, 12)], [(5, 7)]
    )
    assert pred["segments_info"] == []
    ids = decode_panoptic_png(pred["png_string"])
    assert ids.shape == (5, 7) and not ids.any()


def test_masks_resized_from_the_full_padded_grid():
    # The grid's right half lies in the batch padding of this 8x8 image: DETR does not crop it, so
    # the full 4x8 grid is stretched onto the 8x8 image and q1 takes the right half.
    logits = _logits([1, 2])
    masks = torch.zeros(2, 4, 8)
    masks[0, :, :4], masks[1, :, 4:] = 4.0, 4.0
    (pred,) = PostProcessPanoptic(official_is_thing_map())(_outputs(logits, masks), [(8, 8)])
    ids = decode_panoptic_png(pred["png_string"])
    assert (ids[:, :4] == 0).all() and (ids[:, 4:] == 1).all()
    assert [s["area"] for s in pred["segments_info"]] == [32, 32]
