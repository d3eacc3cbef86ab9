"""Panoptic fusion (``detr_d2.modeling.panoptic_inference.panoptic_fusion``) on hand-made logits and
masks: stuff merging, small segments, the keep threshold, no-object, resizing to the output size."""

import torch

from detr_d2.modeling.panoptic_inference import panoptic_fusion


def _logits_for(classes, num_slots, score=10.0):
    lg = torch.full((len(classes), num_slots + 1), -score)
    for i, c in enumerate(classes):
        lg[i, c] = score
    return lg


def test_fusion_stuff_merge_and_small_segments():
    # 4 queries: thing 0 (left), stuff 2 twice (middle/right), thing 1 tiny (2 pixels)
    h, w = 8, 16
    masks = torch.full((4, h, w), -5.0)
    masks[0, :, :4] = 5
    masks[1, :, 4:10] = 5
    masks[2, :, 10:] = 5
    masks[1, :, 10:] = (
        0  # second choice there: after the duplicate stuff query is dropped (DETR's rule:
    )
    # pixels are re-assigned by argmax among the remaining queries), they go to query 1
    masks[3, 0, 0:2] = 20  # wins 2 pixels only -> dropped (area <= 4), pixels go back to query 0
    logits = _logits_for([0, 2, 2, 1], 3)
    is_thing = torch.tensor([True, True, False])
    id_map, segs = panoptic_fusion(logits, masks, (h, w), (h, w), is_thing, mask_stride=1)
    assert [(s["id"], s["category_id"], s["isthing"]) for s in segs] == [
        (1, 0, True),
        (2, 2, False),
    ]
    assert (id_map[:, :4] == 1).all() and (id_map[:, 4:] == 2).all()
    assert [s["area"] for s in segs] == [32, 96]
    # without a second choice the dropped duplicate's pixels go to the first remaining query (DETR's
    # quirk)
    masks[1, :, 10:] = -5
    id_map, segs = panoptic_fusion(logits, masks, (h, w), (h, w), is_thing, mask_stride=1)
    assert (id_map[:, 10:] == 1).all() and [s["area"] for s in segs] == [32 + 48, 48]


def test_fusion_threshold_and_no_object():
    masks = torch.randn(3, 4, 4)
    logits = _logits_for([0, 1, 3], 3)  # query 2 predicts no-object
    logits[1] = 0.0  # uniform -> score 0.25 < 0.85
    id_map, segs = panoptic_fusion(
        logits, masks, (4, 4), (4, 4), torch.tensor([True, True, True]), mask_stride=1
    )
    assert len(segs) == 1 and (id_map == 1).all()
    id_map, segs = panoptic_fusion(
        _logits_for([3, 3], 3), masks[:2], (4, 4), (4, 4), torch.tensor([True] * 3)
    )
    assert segs == [] and (id_map == 0).all()


def test_fusion_resizes_ids_nearest_to_output_size():
    masks = torch.full((2, 2, 4), -5.0)
    masks[0, :, :2] = 5
    masks[1, :, 2:] = 5
    id_map, segs = panoptic_fusion(
        _logits_for([0, 1], 2), masks, (2, 4), (6, 12), torch.tensor([True, True]), mask_stride=1
    )
    assert id_map.shape == (6, 12)
    assert (id_map[:, :6] == 1).all() and (id_map[:, 6:] == 2).all()
    assert [s["area"] for s in segs] == [36, 36]
