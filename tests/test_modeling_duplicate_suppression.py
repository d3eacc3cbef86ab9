"""Duplicate suppression (``MODEL.DETR.DUPLICATE_SUPPRESSION``): a training-only classification-loss
weight.

Off, the loss is DETR's; on with the ordinary no-object weight, it equals DETR's loss (the old
computation); on, every unmatched query whose box overlaps a target box (IoU >= threshold) gets the
duplicate weight and nothing else changes (checked against a per-query loop); with Group DETR it is
the mean of the groups' single-group losses; the model, its checkpoints and its inference are the
plain model's; the official recipes keep it off. The queries near a target come from one
``box_iou`` over the batch, identical to the old loop over the images.
"""

import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torchvision.ops import box_convert, box_iou

import detr_d2
from detr_d2.modeling.criterion import SetCriterion
from detr_d2.modeling.matcher import HungarianMatcher
from tests.utils.group_detr import (
    K,
    group_slice,
    grouped_cfg,
    random_outputs_and_targets,
    stage1_checkpoint,
    stage2_cfg,
    train_batch,
)
from tests.utils.paths import ROOT
from tests.utils.speed_oracles import near_target_per_image

NUM_CLASSES = 3  # the classes of random_outputs_and_targets


def _criterion(dup_weight=None, iou=0.5, eos=0.1):
    return SetCriterion(
        NUM_CLASSES,
        HungarianMatcher(1.0, 5.0, 2.0),
        {"loss_ce": 1.0},
        eos_coef=eos,
        losses=["labels"],
        duplicate_no_object_weight=dup_weight,
        duplicate_iou_threshold=iou,
    )


def _with_duplicates(outputs, targets):
    """Give queries 0 and 1 of image 0 (in every group) the box of its first target: one is matched,
    the other a duplicate."""
    for layer in [outputs] + outputs.get("aux_outputs", []):
        for k in range(K):
            layer["pred_boxes"][0, [k * 4, k * 4 + 1]] = targets[0]["boxes"][0]
    return outputs


@pytest.mark.parametrize("num_groups", [1, K])
@pytest.mark.parametrize("seed", range(2))
def test_ordinary_weight_equals_detr_loss(seed, num_groups):
    """With the duplicate weight equal to the no-object weight, the per-query weighted form gives
    DETR's loss (F.cross_entropy with class weights, the old computation) in every decoder layer."""
    outputs, targets = random_outputs_and_targets(seed)
    outputs = _with_duplicates(outputs, targets)
    old = _criterion()(outputs, targets, num_groups=num_groups)
    new = _criterion(dup_weight=0.1)(outputs, targets, num_groups=num_groups)
    assert set(old) == set(new)
    for key in old:
        torch.testing.assert_close(new[key], old[key], atol=1e-6, rtol=1e-6, msg=key)


@pytest.mark.parametrize("iou", [0.3, 0.5, 0.9])
def test_duplicate_weight_on_unmatched_queries_near_a_target(iou):
    """loss_ce = sum(w * CE) / sum(w) with w the no-object weight for unmatched queries, the
    duplicate weight for unmatched queries whose box has IoU >= threshold with a target box of their
    image, 1 for matched."""
    outputs, targets = random_outputs_and_targets(0)
    outputs = _with_duplicates(outputs, targets)
    outputs = {
        key: outputs[key][:, :4] for key in ("pred_logits", "pred_boxes")
    }  # one group of 4 queries
    crit = _criterion(dup_weight=2.0, iou=iou)
    indices = crit.matcher(outputs, targets)
    total, wsum, near_count = 0.0, 0.0, 0
    for i, (src, tgt) in enumerate(indices):
        matched = dict(zip(src.tolist(), targets[i]["labels"][tgt].tolist()))
        for q in range(outputs["pred_logits"].shape[1]):
            label = matched.get(q, NUM_CLASSES)
            if q in matched:
                w = 1.0
            else:
                w = 0.1
                if len(targets[i]["boxes"]):
                    box = box_convert(outputs["pred_boxes"][i, q : q + 1], "cxcywh", "xyxy")
                    if (
                        box_iou(box, box_convert(targets[i]["boxes"], "cxcywh", "xyxy")).max()
                        >= iou
                    ):
                        w, near_count = 2.0, near_count + 1
            total += w * F.cross_entropy(outputs["pred_logits"][i, q], torch.tensor(label)).item()
            wsum += w
    assert near_count >= 1  # query 0 or 1 of image 0 is the unmatched duplicate
    loss = crit(outputs, targets)["loss_ce"]
    torch.testing.assert_close(loss, torch.tensor(total / wsum), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(loss, _criterion()(outputs, targets)["loss_ce"])


def test_duplicates_get_a_larger_push_to_no_object():
    """One target, queries 0 and 1 on its box, 2 and 3 far from it: the unmatched duplicate's
    no-object logit gets duplicate_weight / no_object_weight (10x) the gradient a far query gets,
    relative to DETR's loss."""
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor(
        [[[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.1, 0.1]]]
    )
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    logits0 = torch.randn(1, 4, NUM_CLASSES + 1, generator=g)
    grads = []
    for crit in (_criterion(), _criterion(dup_weight=1.0)):
        logits = logits0.clone().requires_grad_()
        crit({"pred_logits": logits, "pred_boxes": boxes}, targets)["loss_ce"].backward()
        grads.append(logits.grad[0, :, -1])
    (matched,) = crit.matcher({"pred_logits": logits0, "pred_boxes": boxes}, targets)[0][0].tolist()
    dup = 1 - matched
    ratio = grads[1] / grads[0]
    torch.testing.assert_close(ratio[dup] / ratio[2], torch.tensor(10.0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ratio[3], ratio[2])


def _near_target_case(seed: int, dtype: torch.dtype):
    """Predicted boxes (B, Q, 4) cxcywh and per-image targets with every kind of pair: random
    boxes, boxes on one of their image's targets (IoU 1) or on another image's, boxes scaled about
    a target's centre so that the IoU lands on either side of each threshold, zero-area boxes
    against a zero-area target (IoU 0 / 0 = NaN), images without targets."""
    g = torch.Generator().manual_seed(seed)
    sizes = [3, 0, 5, 1, 0, 4]
    bs, nq = len(sizes), 30
    targets = []
    for n in sizes:
        boxes = torch.cat(
            [torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05],
            1,
        )
        targets.append({"labels": torch.zeros(n, dtype=torch.int64), "boxes": boxes.to(dtype)})
    targets[3]["boxes"][0, 2:] = 0  # a zero-area target
    pred = torch.cat(
        [torch.rand(bs, nq, 2, generator=g), torch.rand(bs, nq, 2, generator=g) * 0.4], 2
    )
    pred = pred.to(dtype)
    # two blocks of 11 queries per image (the last 8 stay random): on a target of the image, 9
    # same-centre boxes with IoU ratio - 1e-4, ratio, ratio + 1e-4 for ratio 0.3, 0.5, 0.9, and on
    # another image's target
    for i, t in enumerate(targets):
        other = targets[(i + 2) % bs]["boxes"]
        for block, q in enumerate((0, 11)):
            if len(t["boxes"]):
                box = t["boxes"][block % len(t["boxes"])]
                pred[i, q] = box
                for k, ratio in enumerate((0.3, 0.5, 0.9)):
                    for d, eps in enumerate((-1e-4, 0.0, 1e-4)):
                        pred[i, q + 1 + 3 * k + d] = torch.cat(
                            [box[:2], box[2:] * (ratio + eps) ** 0.5]
                        )
            if len(other):
                pred[i, q + 10] = other[0]
    pred[3, -2:, 2:] = 0  # zero-area queries in the image with the zero-area target
    return pred, targets


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("iou", [0.3, 0.5, 0.9])
@pytest.mark.parametrize("seed", range(3))
def test_near_target_equals_the_per_image_loop(seed, iou, dtype):
    """``SetCriterion._near_target`` (all images in one ``box_iou``, other images' targets masked)
    gives the old per-image loop's result bit for bit, near-threshold and NaN pairs included."""
    pred, targets = _near_target_case(seed, dtype)
    crit = _criterion(dup_weight=2.0, iou=iou)
    new = crit._near_target(pred, targets)
    old = near_target_per_image(crit, pred, targets)
    assert new.dtype == torch.bool and new.shape == pred.shape[:2]
    assert torch.equal(new, old)
    assert 0 < int(new.sum()) < new.numel()
    assert not new[[1, 4]].any()  # images without targets
    empty = [{"labels": t["labels"][:0], "boxes": t["boxes"][:0]} for t in targets]
    assert not crit._near_target(pred, empty).any()
    assert torch.equal(crit._near_target(pred, empty), near_target_per_image(crit, pred, empty))


@pytest.mark.parametrize("seed", range(2))
def test_grouped_loss_is_mean_of_single_group_losses(seed):
    outputs, targets = random_outputs_and_targets(seed)
    outputs = _with_duplicates(outputs, targets)
    crit = _criterion(dup_weight=1.0)
    singles = [crit(group_slice(outputs, k), targets) for k in range(K)]
    grouped = crit(outputs, targets, num_groups=K)
    for key in grouped:
        expected = torch.stack([s[key] for s in singles]).mean()
        torch.testing.assert_close(grouped[key], expected, atol=1e-6, rtol=1e-5, msg=key)


def _cfg(enabled, num_groups=K):
    cfg = grouped_cfg(num_groups=num_groups)
    cfg.MODEL.DETR.DUPLICATE_SUPPRESSION.ENABLED = enabled
    cfg.MODEL.DETR.DUPLICATE_SUPPRESSION.DUPLICATE_CLASS_WEIGHT = 1.0
    cfg.MODEL.DETR.DUPLICATE_SUPPRESSION.IOU_THRESHOLD = 0.1
    return cfg


def test_model_and_inference_are_the_plain_model():
    """No parameter is added: state dicts have the same keys and load both ways; inference outputs
    are equal; a training step gives the same box/mask losses and a different class loss."""
    plain, suppressed = build_model(_cfg(False)), build_model(_cfg(True))
    suppressed.load_state_dict(plain.state_dict())
    assert set(plain.state_dict()) == set(suppressed.state_dict())
    batch = train_batch()
    losses = []
    for model in (plain, suppressed):
        torch.manual_seed(0)
        with EventStorage():
            losses.append(model(batch))
    for key in losses[0]:
        if key.startswith("loss_ce"):
            assert not torch.equal(losses[0][key], losses[1][key]), key
        else:
            assert torch.equal(losses[0][key], losses[1][key]), key
    plain.eval(), suppressed.eval()
    with torch.no_grad():
        a, b = plain(batch[:2]), suppressed(batch[:2])
    for x, y in zip(a, b):
        assert (
            torch.equal(x["panoptic_seg"][0], y["panoptic_seg"][0])
            and x["panoptic_seg"][1] == y["panoptic_seg"][1]
        )


def test_stage2_refuses_it(tmp_path):
    """Stage 2 freezes the class head: the option would change nothing, so the config is refused."""
    path = tmp_path / "stage1.pth"
    stage1_checkpoint(path, 1)
    cfg = stage2_cfg(path, 1)
    build_model(cfg)  # without the option: fine
    cfg.MODEL.DETR.DUPLICATE_SUPPRESSION.ENABLED = True
    with pytest.raises(
        ValueError,
        match="FROZEN_WEIGHTS freezes the class head.*DUPLICATE_SUPPRESSION.ENABLED False",
    ):
        build_model(cfg)


@pytest.mark.parametrize(
    "name",
    ["Base-DETR.yaml"]
    + [
        f"coco_panoptic/{f}"
        for f in sorted(os.listdir(os.path.join(ROOT, "configs", "coco_panoptic")))
    ],
)
def test_official_recipes_keep_duplicate_suppression_off(name):
    cfg = get_cfg()
    detr_d2.add_detr_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", name))
    assert not cfg.MODEL.DETR.DUPLICATE_SUPPRESSION.ENABLED


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_loss_equals_cpu_loss():
    outputs, targets = random_outputs_and_targets(0)
    outputs = _with_duplicates(outputs, targets)
    crit = _criterion(dup_weight=1.0)
    cpu = crit(outputs, targets, num_groups=K)
    move = lambda d: {
        k: (v.cuda() if torch.is_tensor(v) else [move(a) for a in v]) for k, v in d.items()
    }  # noqa: E731
    cuda = crit.cuda()(move(outputs), [move(t) for t in targets], num_groups=K)
    for key in cpu:
        torch.testing.assert_close(cuda[key].cpu(), cpu[key], atol=1e-5, rtol=1e-5, msg=key)
