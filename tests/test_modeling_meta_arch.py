"""DetrPanoptic end to end on CPU: output shapes, train/eval steps, frozen weights, batching, bad
input."""

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.utils.events import EventStorage

from tests.utils.configs import tiny_detr_cfg
from tests.utils.model_inputs import make_input


@pytest.fixture(scope="module")
def model():
    # seeded here: a module fixture is built before the per-test seed (conftest), so its random
    # weights would otherwise depend on which tests ran before it in this process (pytest -n)
    torch.manual_seed(0)
    return build_model(tiny_detr_cfg())


def test_registered():
    import detr_d2  # noqa: F401

    assert "DetrPanoptic" in META_ARCH_REGISTRY


def test_state_dict_layout(model):
    keys = set(model.state_dict())
    for k in [
        "backbone.stem.conv1.weight",
        "backbone.res2.0.conv1.norm.running_mean",
        "input_proj.weight",
        "transformer.encoder.layers.0.self_attn.in_proj_weight",
        "transformer.decoder.norm.weight",
        "transformer.decoder.layers.1.multihead_attn.out_proj.bias",
        "class_embed.weight",
        "bbox_embed.layers.2.weight",
        "query_embed.weight",
        "bbox_attention.k_linear.weight",
        "mask_head.lay1.weight",
        "mask_head.adapter3.weight",
        "mask_head.out_lay.bias",
    ]:
        assert k in keys, k
    assert not any(k.startswith(("pixel_", "criterion")) for k in keys)
    assert model.class_embed.out_features == 6


def test_raw_output_shapes(model):
    model.eval()
    images, mask = model.preprocess_image([make_input(64, 96, 0), make_input(80, 64, 0)])
    with torch.no_grad():
        out = model.forward_network(images.tensor, mask)
    assert images.tensor.shape == (2, 3, 80, 96)  # padded to max H and max W, no rounding to 32
    assert mask[0, 64:].all() and not mask[0, :64, :96].any() and mask[1, :, 64:].all()
    assert out["pred_logits"].shape == (2, 10, 6)
    assert out["pred_boxes"].shape == (2, 10, 4)
    assert out["pred_boxes"].min() >= 0 and out["pred_boxes"].max() <= 1
    assert out["pred_masks"].shape == (2, 10, 20, 24)  # stride 4 of the padded batch
    assert "aux_outputs" not in out


def test_train_step_then_eval_with_empty_target(model):
    model.train()
    batch = [
        make_input(64, 96, 3),
        make_input(80, 64, 0),
        make_input(72, 72, 2, crowd=[False, True]),
    ]
    with EventStorage() as storage:
        losses = model(batch)
        assert "class_error" in storage.latest()
    expected = {
        "loss_ce",
        "loss_bbox",
        "loss_giou",
        "loss_mask",
        "loss_dice",
        "loss_ce_0",
        "loss_bbox_0",
        "loss_giou_0",
    }
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    model.zero_grad()
    total.backward()
    assert model.class_embed.weight.grad.abs().sum() > 0
    assert model.mask_head.out_lay.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        outs = model(
            [{"image": b["image"], "height": 2 * b["height"], "width": b["width"]} for b in batch]
        )
    for b, o in zip(batch, outs):
        id_map, segs = o["panoptic_seg"]
        assert id_map.shape == (2 * b["height"], b["width"]) and id_map.dtype == torch.int32
        assert set(np.unique(id_map.numpy())) <= {0} | {s["id"] for s in segs}


def test_all_pixels_assigned_and_segment_fields(model):
    model.eval()
    model.object_mask_threshold = 0.0
    try:
        with torch.no_grad():
            (o,) = model([make_input(64, 96, 0)])
    finally:
        model.object_mask_threshold = 0.85
    id_map, segs = o["panoptic_seg"]
    assert segs, "threshold 0 keeps every non-no-object query"
    assert [s["id"] for s in segs] == list(range(1, len(segs) + 1))
    assert (id_map > 0).all()
    for s in segs:
        assert set(s) >= {"id", "category_id", "isthing", "score", "area"}
        assert s["area"] == int((id_map == s["id"]).sum()) and s["area"] > 4
        assert 0 <= s["category_id"] < 5


def test_frozen_weights_only_mask_head_trains(tmp_path):
    cfg = tiny_detr_cfg(mask_on=False)
    det = build_model(cfg)
    path = tmp_path / "det.pth"
    torch.save({"model": det.state_dict()}, path)
    cfg = tiny_detr_cfg()
    cfg.MODEL.DETR.FROZEN_WEIGHTS = str(path)
    with pytest.raises(ValueError, match="set MODEL.DETR.DEEP_SUPERVISION False"):
        build_model(
            cfg
        )  # the frozen decoder cannot learn from auxiliary losses: no silent override
    cfg.MODEL.DETR.DEEP_SUPERVISION = False
    m = build_model(cfg)
    for k, v in det.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    m.train()
    with EventStorage():
        losses = m([make_input(64, 64, 2), make_input(64, 64, 1)])
    assert "loss_ce_0" not in losses  # no aux losses when the detector is frozen
    sum(losses.values()).backward()
    trained = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all(n.startswith(("bbox_attention.", "mask_head.")) for n in trained), (
        trained
    )
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {
        n for n, _ in m.named_parameters() if n.startswith(("bbox_attention.", "mask_head."))
    }


def test_mask_head_weights_initialise_only_the_mask_head(tmp_path):
    """Stage 2 on another dataset: detector from FROZEN_WEIGHTS, mask head from a panoptic
    checkpoint of other classes (the mask head is class-agnostic)."""
    det = build_model(tiny_detr_cfg(mask_on=False))
    det_path = tmp_path / "det.pth"
    torch.save({"model": det.state_dict()}, det_path)
    pan = build_model(tiny_detr_cfg(num_classes=9))  # another class count
    pan_path = tmp_path / "pan.pth"
    torch.save({"model": pan.state_dict()}, pan_path)
    cfg = tiny_detr_cfg()
    cfg.MODEL.DETR.FROZEN_WEIGHTS, cfg.MODEL.DETR.DEEP_SUPERVISION = str(det_path), False
    cfg.MODEL.DETR.MASK_HEAD_WEIGHTS = str(pan_path)
    m = build_model(cfg)
    for k, v in m.state_dict().items():
        source = pan if k.startswith(("bbox_attention.", "mask_head.")) else det
        assert torch.equal(v, source.state_dict()[k]), k
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 50, 256  # other FPN widths
    cfg.MODEL.DETR.FROZEN_WEIGHTS = ""
    with pytest.raises(
        ValueError,
        match=r"MASK_HEAD_WEIGHTS=.*pan.pth.*shape mismatches \['mask_head.adapter1.weight",
    ):
        build_model(cfg)


def test_frozen_weights_rejects_wrong_checkpoint(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"model": {"foo": torch.zeros(1)}}, path)
    cfg = tiny_detr_cfg()
    cfg.MODEL.DETR.FROZEN_WEIGHTS = str(path)
    cfg.MODEL.DETR.DEEP_SUPERVISION = False
    with pytest.raises(ValueError, match="FROZEN_WEIGHTS.*missing keys"):
        build_model(cfg)


def test_batched_equals_single():
    """Two images of different sizes in one batch give the same raw outputs and panoptic maps as
    each alone (padding-invariant backbone, per-image mask head, padding cropped before resizing
    the masks)."""
    model = build_model(tiny_detr_cfg()).eval()
    with (
        torch.no_grad()
    ):  # a random mask head barely separates queries: amplify the attention-map inputs
        model.mask_head.lay1.weight[:, -8:] *= 1e4
    model.object_mask_threshold = 0.0
    a, b = make_input(64, 96, 0, seed=1), make_input(97, 45, 0, seed=2)
    try:
        with torch.no_grad():
            both = model([a, b])
            alone = [model([a])[0], model([b])[0]]
            images, mask = model.preprocess_image([a, b])
            raw_both = model.forward_network(images.tensor, mask)
            raw_alone = []
            for x in (a, b):
                images, mask = model.preprocess_image([x])
                raw_alone.append(model.forward_network(images.tensor, mask))
            # DETR's published post-processor (no crop) on masks of the padded batch grid (batch
            # invariance off: with it, each image's masks are computed on its own region and have no
            # padding)
            invariant, model.batch_invariant, model.crop_mask_padding = (
                model.batch_invariant,
                None,
                False,
            )
            uncropped = model([a, b])
            model.crop_mask_padding = True
            cropped = model([a, b])
    finally:
        model.batch_invariant, model.crop_mask_padding = invariant, True
        model.object_mask_threshold = 0.85
    for i, ra in enumerate(raw_alone):
        torch.testing.assert_close(
            raw_both["pred_logits"][i], ra["pred_logits"][0], atol=1e-4, rtol=1e-4
        )
        torch.testing.assert_close(
            raw_both["pred_boxes"][i], ra["pred_boxes"][0], atol=1e-5, rtol=1e-5
        )
        h4, w4 = ra["pred_masks"].shape[-2:]
        torch.testing.assert_close(
            raw_both["pred_masks"][i, :, :h4, :w4], ra["pred_masks"][0], atol=1e-4, rtol=1e-4
        )
    for x, y in zip(both, alone):
        mx, sx = x["panoptic_seg"]
        my, sy = y["panoptic_seg"]
        assert [s["category_id"] for s in sx] == [s["category_id"] for s in sy]
        assert (mx == my).float().mean().item() >= 0.999
    # DETR's published post-processor (no crop) misaligns the padded images; cropping aligns them
    assert (uncropped[1]["panoptic_seg"][0] == alone[1]["panoptic_seg"][0]).float().mean() < 0.99
    assert (uncropped[1]["panoptic_seg"][0] == cropped[1]["panoptic_seg"][0]).float().mean() < 0.99


def test_batch_invariance_can_be_disabled():
    cfg = tiny_detr_cfg()
    cfg.MODEL.DETR.BATCH_INVARIANT = False
    m = build_model(cfg).eval()
    a, b = make_input(64, 96, 0, seed=1), make_input(97, 45, 0, seed=2)
    with torch.no_grad():
        images, mask = m.preprocess_image([a, b])
        both = m.forward_network(images.tensor, mask)
        images, mask = m.preprocess_image([a])
        alone = m.forward_network(images.tensor, mask)
    # DETR's own behaviour: the padding changes the outputs
    assert (both["pred_logits"][0] - alone["pred_logits"][0]).abs().max() > 1e-3


def test_same_size_batch_is_exact(model):
    model.eval()
    a, b = make_input(64, 64, 0, seed=3), make_input(64, 64, 0, seed=4)
    with torch.no_grad():
        images, mask = model.preprocess_image([a, b])
        both = model.forward_network(images.tensor, mask)
        images, mask = model.preprocess_image([b])
        alone = model.forward_network(images.tensor, mask)
    torch.testing.assert_close(both["pred_masks"][1:], alone["pred_masks"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(both["pred_logits"][1:], alone["pred_logits"], atol=1e-4, rtol=1e-4)


def test_one_pixel_wide_image(model):
    model.eval()
    with torch.no_grad():
        (o,) = model([{"image": torch.zeros(3, 50, 1, dtype=torch.uint8)}])
    assert o["panoptic_seg"][0].shape == (50, 1)
    model.train()
    with EventStorage():
        losses = model([make_input(40, 1, 1)])
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize(
    "bad", [torch.zeros(50, 50), torch.zeros(1, 50, 50), np.zeros((3, 5, 5)), torch.zeros(3, 0, 5)]
)
def test_bad_image_gives_clear_error(model, bad):
    model.eval()
    with pytest.raises(ValueError, match=r"batched_inputs\[0\]\['image'\]"):
        model([{"image": bad}])


def test_missing_instances_in_training(model):
    model.train()
    with pytest.raises(ValueError, match="no 'instances'"):
        model([{"image": torch.zeros(3, 32, 32, dtype=torch.uint8)}])


def _register_meta(name, thing_ids, stuff_ids):
    ids = sorted(thing_ids + stuff_ids)
    MetadataCatalog.get(name).set(
        thing_dataset_id_to_contiguous_id={i: ids.index(i) for i in thing_ids},
        stuff_dataset_id_to_contiguous_id={i: ids.index(i) for i in stuff_ids},
    )


def test_num_classes_checked_against_metadata():
    _register_meta("_detr_test_meta_a", [1, 3], [7, 9, 12])
    cfg = tiny_detr_cfg(num_classes=4)
    cfg.DATASETS.TEST = ("_detr_test_meta_a",)
    with pytest.raises(
        ValueError, match="NUM_CLASSES = 4 but dataset '_detr_test_meta_a' has 5 classes"
    ):
        build_model(cfg)
    cfg.MODEL.DETR.NUM_CLASSES = 0  # derive
    m = build_model(cfg)
    assert m.num_classes == 5 and m.is_thing.tolist() == [True, True, False, False, False]


def test_dataset_id_slots_map_back_to_contiguous():
    _register_meta("_detr_test_meta_b", [1, 3], [7, 9, 12])
    cfg = tiny_detr_cfg(num_classes=13)
    cfg.MODEL.DETR.CLASS_SLOTS = "dataset_id"
    cfg.DATASETS.TEST = ("_detr_test_meta_b",)
    m = build_model(cfg).eval()
    assert m.class_embed.out_features == 14
    assert m.label_map.tolist() == [-1, 0, -1, 1, -1, -1, -1, 2, -1, 3, -1, -1, 4]
    # training targets use slots (= dataset ids)
    inp = make_input(48, 48, 3)
    inp["instances"].gt_classes = torch.tensor([0, 2, 4])
    images, _ = m.preprocess_image([inp])
    (t,) = m.prepare_targets([inp], images)
    assert t["labels"].tolist() == [1, 7, 12]
    # inference: force query 0 to slot 9 (stuff, contiguous 3) everywhere
    with torch.no_grad():
        images, mask = m.preprocess_image([inp])
        out = m.forward_network(images.tensor, mask)
        out["pred_logits"][:] = -10
        out["pred_logits"][0, :, 13] = 10
        out["pred_logits"][0, 0, 13] = -10
        out["pred_logits"][0, 0, 9] = 10
        selection = m.select_queries(out["pred_logits"][0], every_mask=True)
        (r,) = m.postprocess(out, [inp], images.image_sizes, [out["pred_masks"][0]], [selection])
    id_map, segs = r["panoptic_seg"]
    assert segs == [
        {"id": 1, "category_id": 3, "isthing": False, "score": segs[0]["score"], "area": 48 * 48}
    ]
    assert (id_map == 1).all()


def test_instances_and_sem_seg_outputs():
    cfg = tiny_detr_cfg()
    cfg.TEST.INSTANCE_ON = True
    cfg.TEST.SEMANTIC_ON = True
    m = build_model(cfg).eval()
    with torch.no_grad():
        (r,) = m([{"image": torch.zeros(3, 40, 60, dtype=torch.uint8), "height": 80, "width": 120}])
    inst = r["instances"]
    assert inst.image_size == (80, 120)
    assert inst.pred_masks.shape[1:] == (80, 120) and len(inst) == len(inst.scores) == len(
        inst.pred_boxes
    )
    assert r["sem_seg"].shape == (5, 80, 120)


def test_detection_only_model_outputs_instances():
    m = build_model(tiny_detr_cfg(mask_on=False)).eval()
    assert not hasattr(m, "mask_head")
    with torch.no_grad():
        (r,) = m([{"image": torch.zeros(3, 40, 60, dtype=torch.uint8)}])
    assert "panoptic_seg" not in r and r["instances"].pred_boxes.tensor.shape[1] == 4


def test_visualizer_accepts_output(model):
    from detectron2.utils.visualizer import Visualizer

    _register_meta("_detr_test_meta_vis", [0, 1], [2, 3, 4])
    meta = MetadataCatalog.get("_detr_test_meta_vis")
    meta.set(thing_classes=["a", "b", "c", "d", "e"], stuff_classes=["a", "b", "c", "d", "e"])
    model.eval()
    model.object_mask_threshold = 0.0
    try:
        with torch.no_grad():
            (r,) = model([make_input(64, 96, 0)])
    finally:
        model.object_mask_threshold = 0.85
    id_map, segs = r["panoptic_seg"]
    vis = Visualizer(np.zeros((64, 96, 3), dtype=np.uint8), meta)
    img = vis.draw_panoptic_seg_predictions(id_map, segs).get_image()
    assert img.shape == (64, 96, 3) and img.any()
