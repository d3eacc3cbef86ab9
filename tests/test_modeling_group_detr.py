"""Group DETR (``MODEL.DETR.GROUP_DETR.NUM_QUERY_GROUPS``): training-only query groups.

The decoder's group attention mask isolates the groups; matching and losses with K groups equal the
average of K single-group computations on the corresponding slices; inference is exactly the plain
model's; checkpoints load both ways (plain <-> grouped); every group's queries get gradients; the
official recipes keep the option off.
"""

import contextlib
import copy
import logging
import os
import re

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import detr_d2
from detr_d2.modeling.criterion import SetCriterion
from detr_d2.modeling.matcher import HungarianMatcher
from detr_d2.modeling.transformer import Transformer, group_attention_mask
from tests.utils.group_detr import (
    K,
    Q,
    group_slice,
    grouped_cfg,
    random_outputs_and_targets,
    stage1_checkpoint,
    stage2_cfg,
    train_batch,
)
from tests.utils.mask_head_calls import MaskHeadCalls
from tests.utils.model_inputs import make_input
from tests.utils.paths import ROOT


@contextlib.contextmanager
def captured_log(names=("detr_d2.checkpoint.weight_loading",)):
    """Messages logged to the loggers ``names`` (handlers on the loggers themselves: another test
    may stop propagation)."""
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda r: records.append(r.getMessage())
    logs = [logging.getLogger(n) for n in names]
    old_levels = [log.level for log in logs]
    for log in logs:
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        yield records
    finally:
        for log, level in zip(logs, old_levels):
            log.removeHandler(handler)
            log.setLevel(level)


# ----------------------------------------------------------------------------------------------
# decoder
def test_group_attention_mask_layout():
    m = group_attention_mask(2, 3)
    expected = torch.ones(6, 6, dtype=torch.bool)
    expected[:3, :3] = expected[3:, 3:] = False
    assert torch.equal(m, expected)
    assert group_attention_mask(1, 5) is None


@pytest.mark.parametrize("pre_norm", [False, True])
def test_group_attention_mask_isolates_groups(pre_norm):
    """A group's decoder output does not change when the other groups' queries change (bit for bit),
    and equals that group decoded alone; without the mask it does change (the check can fail)."""
    t = Transformer(
        d_model=32,
        nhead=4,
        num_encoder_layers=1,
        num_decoder_layers=2,
        dim_feedforward=64,
        dropout=0.0,
        normalize_before=pre_norm,
    ).train()
    g = torch.Generator().manual_seed(0)
    src, pos = torch.randn(2, 32, 3, 5, generator=g), torch.randn(2, 32, 3, 5, generator=g)
    mask = torch.zeros(2, 3, 5, dtype=torch.bool)
    mask[1, :, 3:] = True  # image 1 padded
    queries = torch.randn(K * Q, 32, generator=g)
    hs, _ = t(src, mask, queries, pos, query_groups=K)
    assert hs.shape == (2, 2, K * Q, 32)
    changed = queries.clone()
    changed[Q:] = torch.randn((K - 1) * Q, 32, generator=g)  # groups 1..K-1
    hs_changed, _ = t(src, mask, changed, pos, query_groups=K)
    assert torch.equal(hs_changed[:, :, :Q], hs[:, :, :Q])
    assert not torch.allclose(hs_changed[:, :, Q:], hs[:, :, Q:])
    for k in range(K):
        alone, _ = t(src, mask, queries[k * Q : (k + 1) * Q], pos)
        torch.testing.assert_close(hs[:, :, k * Q : (k + 1) * Q], alone, atol=1e-5, rtol=1e-5)
    unmasked, _ = t(src, mask, changed, pos, query_groups=1)
    assert not torch.allclose(unmasked[:, :, :Q], hs[:, :, :Q], atol=1e-4)
    with pytest.raises(ValueError, match="12 queries cannot form 5 equal groups"):
        t(src, mask, queries, pos, query_groups=5)


# ----------------------------------------------------------------------------------------------
# matching and losses
@pytest.mark.parametrize("seed", range(3))
def test_group_matching_equals_single_group_matching(seed):
    outputs, targets = random_outputs_and_targets(seed)
    matcher = HungarianMatcher(1.0, 5.0, 2.0)
    grouped = matcher(outputs, targets, num_groups=K)
    singles = [matcher(group_slice(outputs, k), targets) for k in range(K)]
    for i, (src, tgt) in enumerate(grouped):
        assert torch.equal(src, torch.cat([s[i][0] + k * Q for k, s in enumerate(singles)]))
        assert torch.equal(tgt, torch.cat([s[i][1] for s in singles]))
        assert len(src) == K * min(
            Q, len(targets[i]["labels"])
        )  # every target once per group (if it fits)
        assert torch.equal(src, src.sort().values)
    with pytest.raises(ValueError, match="cannot form 5 equal groups"):
        matcher(outputs, targets, num_groups=5)


def _criterion():
    weight_dict = {
        "loss_ce": 1.0,
        "loss_bbox": 5.0,
        "loss_giou": 2.0,
        "loss_mask": 1.0,
        "loss_dice": 1.0,
    }
    return SetCriterion(
        3,
        HungarianMatcher(1.0, 5.0, 2.0),
        weight_dict,
        eos_coef=0.1,
        losses=["labels", "boxes", "masks"],
    )


@pytest.mark.parametrize("masks_from", ["pred_masks", "mask_fn"])
@pytest.mark.parametrize("seed", range(2))
def test_group_losses_equal_average_of_single_group_losses(seed, masks_from):
    """Every loss (class, boxes, masks, auxiliary layers) with K groups = the mean of the K
    single-group criteria on the groups' slices; with ``mask_fn``, one call gets the matched queries
    of all groups."""
    outputs, targets = random_outputs_and_targets(seed)
    crit = _criterion()
    singles = [crit(group_slice(outputs, k), targets) for k in range(K)]
    calls = []
    if masks_from == "mask_fn":
        pred_masks = outputs.pop("pred_masks")

        def mask_fn(queries):
            calls.append([q.tolist() for q in queries])
            return [pred_masks[i, q] for i, q in enumerate(queries)]
    else:
        mask_fn = None
    grouped = crit(outputs, targets, mask_fn, num_groups=K)
    assert set(grouped) == set(singles[0]) and {"loss_mask", "loss_dice", "loss_giou_1"} <= set(
        grouped
    )
    for key in grouped:
        expected = torch.stack([s[key] for s in singles]).mean()
        torch.testing.assert_close(grouped[key], expected, atol=1e-6, rtol=1e-5, msg=key)
    if masks_from == "mask_fn":
        matched = crit.matcher(outputs, targets, num_groups=K)
        assert calls == [[src.tolist() for src, _ in matched]]


# ----------------------------------------------------------------------------------------------
# model
def _plain_and_grouped():
    grouped = build_model(grouped_cfg())
    plain = build_model(grouped_cfg(num_groups=1))
    plain.load_state_dict(
        {k: v for k, v in grouped.state_dict().items() if k != "group_query_embed.weight"}
    )
    return plain, grouped


def test_inference_equals_plain_model():
    plain, grouped = _plain_and_grouped()
    plain.eval(), grouped.eval()
    batch = [make_input(64, 80, 0, seed=5), make_input(48, 64, 0, seed=6)]
    with torch.no_grad():
        images, mask = plain.preprocess_image(batch)
        raw_plain, raw_grouped = (
            plain.forward_network(images.tensor, mask),
            grouped.forward_network(images.tensor, mask),
        )
        res_plain, res_grouped = plain(batch), grouped(batch)
    assert raw_grouped["pred_logits"].shape[1] == grouped.num_queries  # group 0 only
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        assert torch.equal(raw_grouped[key], raw_plain[key]), key
    for a, b in zip(res_plain, res_grouped):
        assert (
            torch.equal(a["panoptic_seg"][0], b["panoptic_seg"][0])
            and a["panoptic_seg"][1] == b["panoptic_seg"][1]
        )


def test_training_decodes_all_groups_and_every_group_gets_gradients():
    model = build_model(grouped_cfg()).train()
    q = model.num_queries
    calls = MaskHeadCalls(model)
    with EventStorage():
        images, mask = model.preprocess_image(train_batch())
        out, state = model.forward_detector(images.tensor, mask)
        assert out["pred_logits"].shape[1] == K * q and state["hs"].shape[1] == K * q
        assert all(a["pred_logits"].shape[1] == K * q for a in out["aux_outputs"])
        losses = model(train_batch())
    calls.close()
    assert calls.rows[-2:] == [
        K * 3,
        K * 2,
    ]  # the mask head on the matched queries of all groups (image 1: none)
    sum(losses.values()).backward()
    for name in ("query_embed", "group_query_embed"):
        grad = getattr(model, name).weight.grad
        assert grad is not None and (grad.abs().sum(1) > 0).all(), (
            name
        )  # every query of every group


def test_all_query_masks_training_equals_matched_query_masks():
    batch = [make_input(40, 48, 3, seed=1), make_input(32, 40, 2, seed=3)]
    model = build_model(grouped_cfg()).train()
    with torch.no_grad():  # distinct masks per query (as in test_modeling_query_masks)
        model.mask_head.lay1.weight[:, -model.transformer.nhead :] *= 1e4
    results = []
    for all_query_masks in (True, False):
        model.all_query_masks = all_query_masks
        model.zero_grad(set_to_none=True)
        with EventStorage():
            losses = model(copy.deepcopy(batch))
        sum(losses.values()).backward()
        results.append(
            (
                {k: v.detach() for k, v in losses.items()},
                {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
            )
        )
    (ref_l, ref_g), (l, g) = results
    assert ref_l.keys() == l.keys() and ref_g.keys() == g.keys()
    for k in l:
        torch.testing.assert_close(l[k], ref_l[k], atol=1e-5, rtol=1e-5, msg=k)
    for k in g:
        torch.testing.assert_close(g[k], ref_g[k], atol=1e-5, rtol=1e-4, msg=k)


# ----------------------------------------------------------------------------------------------
# checkpoints
def test_grouped_checkpoint_loads_into_plain_model():
    grouped = build_model(grouped_cfg())
    plain = build_model(grouped_cfg(num_groups=1))
    with captured_log() as log:
        result = plain.load_state_dict(grouped.state_dict(), strict=True)  # no unexpected key
    assert not result.missing_keys and not result.unexpected_keys
    assert any("Ignored group_query_embed.weight (20, 128)" in m for m in log), log
    for k, v in plain.state_dict().items():
        assert torch.equal(v, grouped.state_dict()[k]), k


def test_plain_checkpoint_initialises_the_extra_groups_from_query_embed():
    plain = build_model(grouped_cfg(num_groups=1))
    grouped = build_model(grouped_cfg())
    with captured_log() as log:
        result = grouped.load_state_dict(plain.state_dict(), strict=True)  # no missing key
    assert not result.missing_keys and not result.unexpected_keys
    assert any("Initialised group_query_embed.weight" in m for m in log), log
    base = plain.query_embed.weight.detach()
    extra = grouped.group_query_embed.weight.detach().view(K - 1, plain.num_queries, -1)
    noise = extra - base
    assert noise.abs().max() < 0.1 * base.std() * 6  # copies of group 0 + N(0, (0.1 std)^2)
    assert noise.std() > 0.05 * base.std() and not torch.allclose(
        extra[0], extra[1]
    )  # the groups differ
    assert torch.equal(grouped.query_embed.weight, plain.query_embed.weight)


def test_checkpoints_round_trip_through_detectron2_checkpointer(tmp_path):
    """The training/evaluation path: DetectionCheckpointer files, grouped -> grouped (resume),
    grouped -> plain, plain -> grouped, and a grouped checkpoint of another K (re-initialised
    from group 0)."""
    grouped = build_model(grouped_cfg())
    DetectionCheckpointer(grouped, save_dir=str(tmp_path)).save("grouped")
    path = str(tmp_path / "grouped.pth")
    again = build_model(grouped_cfg())
    DetectionCheckpointer(again).load(path)
    for k, v in grouped.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    loggers = ("detr_d2.checkpoint.weight_loading", "fvcore.common.checkpoint")
    plain = build_model(grouped_cfg(num_groups=1))
    with captured_log(loggers) as log:
        DetectionCheckpointer(plain).load(path)
    assert [m for m in log if "group_query_embed" in m] == [
        "Ignored group_query_embed.weight (20, 128) from the checkpoint: Group DETR's "
        "training-only queries (this "
        "model decodes query_embed only, as at inference)"
    ]  # and no "unexpected key" warning from fvcore
    assert torch.equal(plain.query_embed.weight, grouped.query_embed.weight)
    DetectionCheckpointer(plain, save_dir=str(tmp_path)).save("plain")
    for num_groups, src in ((K, "plain.pth"), (2, "grouped.pth")):
        other = build_model(grouped_cfg(num_groups=num_groups))
        with captured_log(loggers) as log:
            DetectionCheckpointer(other).load(str(tmp_path / src))
        assert any("Initialised group_query_embed.weight" in m for m in log), (num_groups, src, log)
        assert not any(
            "not found in the checkpoint" in m and "group_query_embed" in m for m in log
        ), log
        extra = other.group_query_embed.weight.view(num_groups - 1, other.num_queries, -1)
        noise = extra - grouped.query_embed.weight
        assert noise.abs().max() < 0.1 * grouped.query_embed.weight.std() * 6 and noise.std() > 0


# ----------------------------------------------------------------------------------------------
# config
@pytest.mark.parametrize("stage2_groups", [1, K])
def test_stage2_on_a_detector_trained_with_groups(tmp_path, stage2_groups):
    """A stage 1 trained with K groups feeds a plain stage 2 (its extra groups ignored) and a
    grouped one (its trained groups frozen with the detector: the mask head learns from the matched
    queries of every group)."""
    path = tmp_path / "stage1.pth"
    stage1 = stage1_checkpoint(path, K)
    model = build_model(stage2_cfg(path, stage2_groups)).train()
    trainable = sorted({n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad})
    assert trainable == ["bbox_attention", "mask_head"]
    for k, v in stage1.state_dict().items():
        if k in model.state_dict() and not k.startswith(model.mask_head_parameter_prefixes()):
            assert torch.equal(model.state_dict()[k], v), k
    calls = MaskHeadCalls(model)
    with EventStorage():
        losses = model(train_batch())
    calls.close()
    assert calls.rows == [
        stage2_groups * 3,
        stage2_groups * 2,
    ]  # matched queries of every group (image 1: none)
    sum(losses.values()).backward()
    assert (
        model.mask_head.lay1.weight.grad.abs().sum() > 0 and model.query_embed.weight.grad is None
    )


def test_grouped_stage2_needs_a_detector_trained_with_the_same_groups(tmp_path):
    for stage1_groups, found in ((1, "None"), (2, "(10, 128)")):
        path = tmp_path / f"stage1_g{stage1_groups}.pth"
        stage1_checkpoint(path, stage1_groups)
        with pytest.raises(
            ValueError,
            match=rf"FROZEN_WEIGHTS=.*stage1_g{stage1_groups}.pth.*NUM_QUERY_GROUPS=3.*"
            rf"group_query_embed.weight of shape \(20, 128\) \(found {re.escape(found)}\)",
        ):
            build_model(stage2_cfg(path, K))


def test_bad_number_of_groups_refused():
    with pytest.raises(ValueError, match="NUM_QUERY_GROUPS must be an integer >= 1, got 0"):
        build_model(grouped_cfg(num_groups=0))


@pytest.mark.parametrize(
    "name",
    ["Base-DETR.yaml"]
    + [
        f"coco_panoptic/{f}"
        for f in sorted(os.listdir(os.path.join(ROOT, "configs", "coco_panoptic")))
    ],
)
def test_official_recipes_keep_group_detr_off(name):
    cfg = get_cfg()
    detr_d2.add_detr_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", name))
    assert cfg.MODEL.DETR.GROUP_DETR.NUM_QUERY_GROUPS == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_step_and_inference_equal_to_plain():
    plain, grouped = _plain_and_grouped()
    plain, grouped = plain.cuda().eval(), grouped.cuda().train()
    with EventStorage():
        losses = grouped(train_batch())
    sum(losses.values()).backward()
    assert (grouped.group_query_embed.weight.grad.abs().sum(1) > 0).all()
    grouped.eval()  # no optimiser step: still plain's weights
    batch = [make_input(64, 80, 0, seed=5)]
    with torch.no_grad():
        a, b = plain(batch)[0]["panoptic_seg"], grouped(batch)[0]["panoptic_seg"]
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
