"""Matcher optimality, each loss against a hand computation, and the panoptic fusion rules."""

import itertools

import pytest
import torch

from detr_d2.modeling.criterion import SetCriterion
from detr_d2.modeling.mask_losses import sigmoid_focal_dice_loss
from detr_d2.modeling.matcher import HungarianMatcher


def _rand_boxes(n, g):
    c = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
    return torch.cat([c, wh], 1)


@pytest.mark.parametrize("seed", range(6))
def test_matcher_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    q, n = 5, int(torch.randint(1, 5, (1,), generator=g))
    outputs = {
        "pred_logits": torch.randn(1, q, 4, generator=g),
        "pred_boxes": _rand_boxes(q, g)[None],
    }
    targets = [{"labels": torch.randint(0, 3, (n,), generator=g), "boxes": _rand_boxes(n, g)}]
    matcher = HungarianMatcher(1.0, 5.0, 2.0)
    (cost,) = matcher.cost_matrices(outputs, targets)
    ((src, tgt),) = matcher(outputs, targets)
    got = cost[src, tgt].sum().item()
    best = min(
        sum(cost[p[j], j].item() for j in range(n)) for p in itertools.permutations(range(q), n)
    )
    assert got == pytest.approx(best, abs=1e-5)
    assert len(src) == n and len(set(src.tolist())) == n
    # the cost matrix itself, entry (0, 0), by hand
    p = outputs["pred_logits"][0, 0].softmax(-1)
    b, t = outputs["pred_boxes"][0, 0], targets[0]["boxes"][0]
    from torchvision.ops import box_convert, generalized_box_iou

    giou = generalized_box_iou(
        box_convert(b[None], "cxcywh", "xyxy"), box_convert(t[None], "cxcywh", "xyxy")
    )[0, 0]
    hand = 5 * (b - t).abs().sum() - p[targets[0]["labels"][0]] - 2 * giou
    assert cost[0, 0].item() == pytest.approx(hand.item(), abs=1e-5)


def test_matcher_no_targets():
    outputs = {"pred_logits": torch.randn(2, 3, 4), "pred_boxes": torch.rand(2, 3, 4)}
    targets = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2
    for s, t in HungarianMatcher()(outputs, targets):
        assert s.numel() == 0 and t.numel() == 0


def test_losses_by_hand():
    logits = torch.tensor(
        [[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]]
    )  # 1 image, 2 queries, 2 classes + no-object
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]]])
    tgt_box = torch.tensor([[0.5, 0.4, 0.2, 0.4]])
    masks_pred = torch.tensor(
        [[[[0.0, 1.0], [2.0, -1.0]], [[0.0, 0.0], [0.0, 0.0]]]]
    )  # (1, 2, 2, 2)
    tgt_mask = torch.tensor(
        [
            [
                [True, True, False, False],
                [True, True, False, False],
                [False, False, False, False],
                [False, False, False, False],
            ]
        ]
    )  # (1, 4, 4)
    targets = [{"labels": torch.tensor([0]), "boxes": tgt_box, "masks": tgt_mask}]
    outputs = {"pred_logits": logits, "pred_boxes": boxes, "pred_masks": masks_pred}
    matcher = HungarianMatcher(1.0, 0.0, 0.0)  # class cost only -> query 0 (p(class 0) highest)
    crit = SetCriterion(2, matcher, {}, eos_coef=0.1)
    losses = crit(outputs, targets)

    # CE: query 0 -> class 0 (weight 1), query 1 -> no-object (weight 0.1); weighted mean
    ce0 = -torch.log_softmax(logits[0, 0], -1)[0]
    ce1 = -torch.log_softmax(logits[0, 1], -1)[2]
    assert losses["loss_ce"].item() == pytest.approx(((ce0 + 0.1 * ce1) / 1.1).item(), rel=1e-6)
    # L1 on cxcywh, summed, / num_boxes (1)
    assert losses["loss_bbox"].item() == pytest.approx(0.0 + 0.1 + 0.0 + 0.2, abs=1e-6)
    # GIoU: pred xyxy (.4,.4,.6,.6), target (.4,.2,.6,.6): IoU = .04/.08, enclosing = union -> giou
    # = .5
    assert losses["loss_giou"].item() == pytest.approx(0.5, abs=1e-6)
    # masks: bilinear 2x2 -> 4x4 (align_corners False), then focal / dice by hand
    up = torch.nn.functional.interpolate(
        masks_pred[:, :1], size=(4, 4), mode="bilinear", align_corners=False
    ).flatten()
    t = tgt_mask.flatten().float()
    p = up.sigmoid()
    ce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = 0.25 * t + 0.75 * (1 - t)
    focal = (alpha_t * ce * (1 - p_t) ** 2).mean()
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    assert losses["loss_mask"].item() == pytest.approx(focal.item(), rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(dice.item(), rel=1e-5)
    assert losses["class_error"].item() == 0.0


def test_dice_and_focal_normalised_by_num_boxes():
    x = torch.randn(3, 10)
    t = torch.rand(3, 10) > 0.5
    focal1, dice1 = sigmoid_focal_dice_loss(x, t, 1.0)
    focal3, dice3 = sigmoid_focal_dice_loss(x, t, 3.0)
    assert dice3.item() == pytest.approx(dice1.item() / 3, rel=1e-6)
    assert focal3.item() == pytest.approx(focal1.item() / 3, rel=1e-6)
