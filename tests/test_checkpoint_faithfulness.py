"""Faithfulness of the official-checkpoint path, end to end on CPU:

reference DETRsegm (tests.utils.official_detr, random weights) -> "official checkpoint" -> converter
-> DetrPanoptic loaded through DetectionCheckpointer -> Detectron2 test mapper with DETR's resize on
the COCO sample image -> raw outputs and panoptic map compared with the reference model + DETR's
PostProcessPanoptic (tolerances from issue 6: logits 1e-2, boxes 1e-4, mask logits 5e-2; same
segments, >= 99.9% of pixels equal).

Small model to stay fast: ResNet-50 (Bottleneck blocks, so stride placement matters), hidden 128,
2+2 layers, 10 queries, image resized to short side 160 (427x640 -> 160x239; Detectron2's rounding
would give 240).
"""

import os

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model

import detr_d2
from detr_d2.checkpoint import convert_official_detr, d2_checkpoint
from detr_d2.data.dataset_mappers.detr_panoptic_dataset_mapper import DetrPanopticDatasetMapper
from tests.utils.official_detr import (
    OfficialDETRsegm,
    PostProcessPanoptic,
    decode_panoptic_png,
    detr_resized_hw,
    load_rgb_image,
    nested_tensor_from_tensor_list,
    official_eval_transform,
    official_is_thing_map,
    randomize_frozen_batchnorm_,
)
from tests.utils.paths import COCO_SAMPLE, ROOT

IMAGE = os.path.join(COCO_SAMPLE, "input_images", "000000142238.jpg")  # 640x427
IMAGE2 = os.path.join(COCO_SAMPLE, "input_images", "000000439180.jpg")
SHORT_SIDE = 160
NUM_QUERIES = 10
SMALL = dict(
    hidden_dim=128, enc_layers=2, dec_layers=2, dim_feedforward=256, num_queries=NUM_QUERIES
)
# Target class per query: things 1, 3, 18; stuff 184 twice (DETR merges them), 187, 193; no-object
# 250.
QUERY_CLASSES = [1, 184, 3, 250, 184, 187, 18, 250, 1, 193]


class RecordingCheckpointer(DetectionCheckpointer):
    """Keeps the incompatible-keys result that DetectionCheckpointer only logs."""

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


@torch.no_grad()
def calibrate_reference_(ref: OfficialDETRsegm, image: torch.Tensor) -> None:
    """Choose head weights that make the random model's panoptic output diverse (in place).

    With random weights every query decodes to nearly the same vector: all get the same class and
    masks equal to ~1e-4, so a panoptic comparison would only compare ties. The architecture is left
    alone; only weights are picked: ``class_embed`` and ``bbox_attention.q_linear`` are solved by
    least squares on this image's decoder output so that query q gets ``QUERY_CLASSES[q]`` (logit
    10) and attends to its own memory position; the mask head's image-feature inputs are scaled down
    and the attention-map input scaled up so each query's attention decides its mask.
    """
    detr = ref.detr
    features, pos = detr.backbone(nested_tensor_from_tensor_list([image]))
    src, mask = features[-1].decompose()
    hs, memory = detr.transformer(detr.input_proj(src), mask, detr.query_embed.weight, pos[-1])
    design = torch.cat([hs[-1, 0], torch.ones(NUM_QUERIES, 1)], 1).double()  # (Q, C + 1)
    pinv = torch.linalg.pinv(design)

    targets = torch.zeros(NUM_QUERIES, detr.class_embed.out_features, dtype=torch.float64)
    targets[torch.arange(NUM_QUERIES), QUERY_CLASSES] = 10.0
    solution = (pinv @ targets).float()
    detr.class_embed.weight.copy_(solution[:-1].T)
    detr.class_embed.bias.copy_(solution[-1])

    att = ref.bbox_attention
    keys = torch.nn.functional.conv2d(
        memory, att.k_linear.weight[:, :, None, None], att.k_linear.bias
    )[0].flatten(1)
    keys = keys - keys.mean(1, keepdim=True)
    positions = torch.linspace(0, keys.shape[1] - 1, NUM_QUERIES).round().long()
    wanted_q = 40.0 * (keys[:, positions] / keys[:, positions].norm(dim=0, keepdim=True)).T
    solution = (pinv @ wanted_q.double()).float()
    att.q_linear.weight.copy_(solution[:-1].T)
    att.q_linear.bias.copy_(solution[-1])

    hidden = detr.transformer.d_model
    ref.mask_head.lay1.weight[:, :hidden] *= 1e-3
    ref.mask_head.lay1.weight[:, hidden:] *= 300.0
    for adapter in (ref.mask_head.adapter1, ref.mask_head.adapter2, ref.mask_head.adapter3):
        adapter.weight *= 1e-3


def detr_d2_official_cfg():
    """configs/coco_panoptic/detr_r50_official.yaml (250 dataset-id slots, DETR resize) made
    small."""
    cfg = get_cfg()
    detr_d2.add_detr_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "coco_panoptic", "detr_r50_official.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.DETR.HIDDEN_DIM = SMALL["hidden_dim"]
    cfg.MODEL.DETR.ENC_LAYERS = SMALL["enc_layers"]
    cfg.MODEL.DETR.DEC_LAYERS = SMALL["dec_layers"]
    cfg.MODEL.DETR.DIM_FEEDFORWARD = SMALL["dim_feedforward"]
    cfg.MODEL.DETR.NUM_OBJECT_QUERIES = NUM_QUERIES
    cfg.INPUT.MIN_SIZE_TEST = SHORT_SIDE
    return cfg


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    ref = randomize_frozen_batchnorm_(
        OfficialDETRsegm(**SMALL), torch.Generator().manual_seed(0)
    ).eval()
    ref_image, ref_size = official_eval_transform(load_rgb_image(IMAGE), size=SHORT_SIDE)
    calibrate_reference_(ref, ref_image)

    path = str(tmp_path_factory.mktemp("faithfulness") / "converted.pth")
    torch.save(
        d2_checkpoint(
            convert_official_detr(ref.state_dict()), author="detr_d2", matching_heuristics=False
        ),
        path,
    )
    cfg = detr_d2_official_cfg()
    model = build_model(cfg).eval()
    checkpointer = RecordingCheckpointer(model)
    checkpointer.load(path)

    mapper = DetrPanopticDatasetMapper(cfg, is_train=False)
    inputs = mapper({"file_name": IMAGE, "height": 427, "width": 640, "image_id": 142238})
    return {
        "ref": ref,
        "ref_image": ref_image,
        "ref_size": ref_size,
        "model": model,
        "cfg": cfg,
        "incompatible": checkpointer.incompatible,
        "inputs": inputs,
        "mapper": mapper,
    }


def test_converted_official_checkpoint_loads_without_incompatible_keys(setup):
    inc = setup["incompatible"]
    assert inc.missing_keys == [] and inc.unexpected_keys == [] and inc.incorrect_shapes == []
    model_bn = setup["model"].backbone.res3[1].conv2.norm
    ref_bn = setup["ref"].detr.backbone[0].body.layer2[1].bn2
    assert torch.equal(model_bn.running_var, ref_bn.running_var)  # real statistics, not identity


def test_input_pipeline_matches_detr_resize(setup):
    assert setup["ref_size"] == (160, 239) == detr_resized_hw(640, 427, SHORT_SIDE)
    assert T.ResizeShortestEdge.get_output_shape(427, 640, SHORT_SIDE, 1333) == (
        160,
        240,
    )  # D2 rounding differs
    image = setup["inputs"]["image"]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 160, 239)
    expected = np.asarray(TF.resize(load_rgb_image(IMAGE), [160, 239]))  # PIL bilinear, RGB
    assert np.array_equal(image.permute(1, 2, 0).numpy(), expected)


def _compare_raw(ours, ref):
    assert ours["pred_logits"].shape == ref["pred_logits"].shape
    assert ours["pred_masks"].shape == ref["pred_masks"].shape
    diffs = {
        k: (ours[k] - ref[k]).abs().max().item()
        for k in ("pred_logits", "pred_boxes", "pred_masks")
    }
    assert diffs["pred_logits"] < 1e-2, diffs
    assert diffs["pred_boxes"] < 1e-4, diffs
    assert diffs["pred_masks"] < 5e-2, diffs


def test_raw_outputs_match_reference(setup):
    model = setup["model"]
    with torch.no_grad():
        images, pixel_mask = model.preprocess_image([setup["inputs"]])
        ours = model.forward_network(images.tensor, pixel_mask)
        ref = setup["ref"](nested_tensor_from_tensor_list([setup["ref_image"]]))
    _compare_raw(ours, ref)


def _padded_batch(setup):
    """The two sample images through the mapper (160x239 and 160x284: the first gets padded)."""
    second = setup["mapper"]({"file_name": IMAGE2, "image_id": 439180})
    ref_second, _ = official_eval_transform(load_rgb_image(IMAGE2), size=SHORT_SIDE)
    assert tuple(second["image"].shape[1:]) == tuple(ref_second.shape[1:]) == (160, 284)
    return [setup["inputs"], second], [setup["ref_image"], ref_second]


def test_padded_batch_gives_single_image_reference_outputs(setup):
    """Default MODEL.DETR.BATCH_INVARIANT True: in a padded batch each image gets DETR's
    single-image outputs (masks on its own region of the grid)."""
    model = setup["model"]
    inputs, ref_images = _padded_batch(setup)
    with torch.no_grad():
        images, pixel_mask = model.preprocess_image(inputs)
        ours = model.forward_network(images.tensor, pixel_mask)
        for i, ref_image in enumerate(ref_images):
            ref = setup["ref"](nested_tensor_from_tensor_list([ref_image]))
            h2, w2 = ref["pred_masks"].shape[-2:]
            ours_i = {k: v[i : i + 1] for k, v in ours.items()}
            ours_i["pred_masks"] = ours_i["pred_masks"][..., :h2, :w2]
            _compare_raw(ours_i, ref)


def test_padded_batch_matches_reference_batch_without_batch_invariance(setup):
    """MODEL.DETR.BATCH_INVARIANT False + TEST.CROP_MASK_PADDING False: DETR's own padded-batch
    computation (padding leaks into the valid region through the convolutions and the mask head's
    GroupNorm) and post-processing (masks resized from the whole padded grid)."""
    cfg = setup["cfg"].clone()
    cfg.MODEL.DETR.BATCH_INVARIANT = False
    cfg.TEST.CROP_MASK_PADDING = False
    model = build_model(cfg).eval()
    model.load_state_dict(setup["model"].state_dict(), strict=True)
    inputs, ref_images = _padded_batch(setup)
    with torch.no_grad():
        images, pixel_mask = model.preprocess_image(inputs)
        ours = model.forward_network(images.tensor, pixel_mask)
        samples = nested_tensor_from_tensor_list(ref_images)
        ref = setup["ref"](samples)
        single = setup["ref"](nested_tensor_from_tensor_list(ref_images[:1]))
    assert torch.equal(pixel_mask, samples.mask)
    _compare_raw(ours, ref)
    # sensitivity: DETR's padded result for the first image is not its single-image result
    assert (ref["pred_logits"][0] - single["pred_logits"][0]).abs().max() > 1e-2

    # panoptic map of the padded image (the second, uncalibrated image has near-tied masks: not
    # compared)
    with torch.no_grad():
        ids, segments = model(inputs)[0]["panoptic_seg"]
    ref_pred = PostProcessPanoptic(official_is_thing_map())(
        ref, [(160, 239), (160, 284)], [(427, 640), (360, 640)]
    )[0]
    ref_ids = decode_panoptic_png(ref_pred["png_string"])
    assert len(ref_pred["segments_info"]) >= 2
    assert _as_official(segments, cfg) == [
        (s["id"], s["category_id"], s["isthing"]) for s in ref_pred["segments_info"]
    ]
    assert float(((ids.numpy() - 1) == ref_ids).mean()) >= 0.999


def _as_official(segments, cfg):
    """detr_d2 segments_info -> DETR's (id, dataset category id, isthing): detr_d2 numbers segments
    from 1 (Detectron2 habit; DETR from 0) and reports contiguous category ids."""
    meta = MetadataCatalog.get(cfg.DATASETS.TEST[0])
    contiguous_to_dataset = {
        c: d
        for m in (meta.thing_dataset_id_to_contiguous_id, meta.stuff_dataset_id_to_contiguous_id)
        for d, c in m.items()
    }
    return [(s["id"] - 1, contiguous_to_dataset[s["category_id"]], s["isthing"]) for s in segments]


def test_panoptic_map_matches_official_postprocessor(setup):
    with torch.no_grad():
        ref_out = setup["ref"](nested_tensor_from_tensor_list([setup["ref_image"]]))
        (ref_pred,) = PostProcessPanoptic(official_is_thing_map(), threshold=0.85)(
            ref_out, [setup["ref_size"]], [(427, 640)]
        )
        ids, segments = setup["model"]([setup["inputs"]])[0]["panoptic_seg"]
    ref_ids = decode_panoptic_png(ref_pred["png_string"])
    ref_segments = ref_pred["segments_info"]
    # the calibration worked: 7 segments, one of the two queries of stuff class 184 merged away
    assert [s["category_id"] for s in ref_segments] == [1, 184, 3, 187, 18, 1, 193]

    assert _as_official(segments, setup["cfg"]) == [
        (s["id"], s["category_id"], s["isthing"]) for s in ref_segments
    ]
    ids = ids.numpy()
    assert ids.shape == ref_ids.shape == (427, 640)
    equal = float(((ids - 1) == ref_ids).mean())
    assert equal >= 0.999, f"only {equal:.4%} of pixels equal"
    for ours_seg, ref_seg in zip(segments, ref_segments):
        assert abs(ours_seg["area"] - ref_seg["area"]) <= 0.001 * ids.size


def test_masks_of_kept_queries_only_give_the_all_query_panoptic_map(setup):
    """8 of the 10 queries are kept: computing only their masks gives exactly the map of computing
    all."""
    model = setup["model"]
    try:
        with torch.no_grad():
            model.all_query_masks = True
            ids_all, segments_all = model([setup["inputs"]])[0]["panoptic_seg"]
            model.all_query_masks = False
            ids, segments = model([setup["inputs"]])[0]["panoptic_seg"]
    finally:
        model.all_query_masks = False
    assert torch.equal(ids, ids_all) and segments == segments_all and len(segments) == 7
