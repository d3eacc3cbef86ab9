"""DetrPanopticDatasetMapper on the real COCO sample: targets, alignment, modes, bad input."""

import copy
import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.data.detection_utils import SizeMismatchError
from panopticapi.utils import id2rgb, rgb2id
from PIL import Image

from detr_d2 import add_detr_config
from detr_d2.data import DetrPanopticDatasetMapper
from detr_d2.data.datasets import build_panoptic_metadata, load_panoptic_json
from detr_d2.data.transforms import DetrResizeShortestEdge

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "coco_panoptic_sample")
SAMPLE_JSON = os.path.join(SAMPLE, "panoptic_examples.json")
SAMPLE_PNGS = os.path.join(SAMPLE, "panoptic_examples")


@pytest.fixture(scope="module")
def sample_dicts():
    with open(SAMPLE_JSON) as f:
        cats = json.load(f)["categories"]
    meta = build_panoptic_metadata(cats)
    return load_panoptic_json(SAMPLE_JSON, os.path.join(SAMPLE, "input_images"), SAMPLE_PNGS, meta)


def _mapper(augs, is_train=True, fmt="RGB"):
    return DetrPanopticDatasetMapper(is_train, augmentations=augs, image_format=fmt)


def test_targets_without_augmentation_match_the_panoptic_json(sample_dicts):
    for d in sample_dicts:
        out = _mapper([])(d)
        inst = out["instances"]
        h, w = d["height"], d["width"]
        assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, h, w)
        assert inst.image_size == (h, w) and len(inst) == len(d["segments_info"])
        assert inst.gt_classes.dtype == torch.int64
        assert inst.gt_masks.tensor.dtype == torch.bool and inst.gt_masks.tensor.shape == (
            len(inst),
            h,
            w,
        )
        expected_boxes = torch.tensor(
            [[x, y, x + bw, y + bh] for x, y, bw, bh in (s["bbox"] for s in d["segments_info"])],
            dtype=torch.float32,
        )
        assert torch.equal(inst.gt_boxes.tensor, expected_boxes)  # XYXY from the mask extent
        assert inst.gt_classes.tolist() == [s["category_id"] for s in d["segments_info"]]
        assert inst.gt_is_crowd.tolist() == [bool(s["iscrowd"]) for s in d["segments_info"]]
        assert inst.gt_masks.tensor.sum((1, 2)).tolist() == [s["area"] for s in d["segments_info"]]
        assert (out["height"], out["width"], out["image_id"]) == (h, w, d["image_id"])
    # crowd and stuff segments are kept as instances
    assert inst.gt_is_crowd.sum() == 2 and (inst.gt_classes >= 80).sum() == 4


def test_image_is_in_cfg_format_channel_order(sample_dicts):
    rgb = _mapper([], fmt="RGB")(sample_dicts[0])["image"]
    bgr = _mapper([], fmt="BGR")(sample_dicts[0])["image"]
    assert torch.equal(rgb.flip(0), bgr)
    ref = np.array(Image.open(sample_dicts[0]["file_name"]).convert("RGB"))
    assert torch.equal(rgb, torch.from_numpy(ref).permute(2, 0, 1))


@pytest.fixture
def colour_coded(tmp_path, sample_dicts):
    """The sample with each image replaced by its panoptic PNG (pixel colour = segment id)."""
    d = copy.deepcopy(sample_dicts[0])
    path = tmp_path / "image.png"
    shutil.copy(d["pan_seg_file_name"], path)
    d["file_name"] = str(path)
    return d


def _check_alignment(out, exact: bool):
    image = out["image"].permute(1, 2, 0).numpy().astype(int)
    ids = np.zeros(image.shape[:2], np.int64)
    inst = out["instances"]
    masks = inst.gt_masks.tensor.numpy()
    assert (masks.sum(0) <= 1).all()
    seg_ids = []
    for k in range(len(inst)):
        # recover each instance's id from the colour under its mask (majority)
        colours = image[masks[k]]
        values, counts = np.unique(rgb2id(colours[None].astype(np.uint8))[0], return_counts=True)
        seg_ids.append(values[counts.argmax()])
        ids[masks[k]] = seg_ids[-1]
    expected = id2rgb(ids).astype(int)
    covered = masks.any(0)
    agree = (np.abs(image - expected).max(-1) <= 2)[covered]
    if exact:
        assert agree.all()
    else:  # bilinear (antialiased) image vs nearest mask: only pixels near boundaries may differ
        from scipy import ndimage

        interior = (ndimage.maximum_filter(ids, 5) == ndimage.minimum_filter(ids, 5))[covered]
        assert interior.mean() > 0.5 and agree[interior].mean() > 0.99, agree[interior].mean()
    return seg_ids


def test_image_and_masks_stay_aligned_through_flip_crop_resize(colour_coded):
    np.random.seed(0)
    nearest = [
        T.RandomFlip(prob=1.0),
        T.RandomApply(
            T.AugmentationList(
                [
                    DetrResizeShortestEdge([300, 350], sample_style="choice", interp=Image.NEAREST),
                    T.RandomCrop("absolute_range", (150, 250)),
                ]
            ),
            prob=1.0,
        ),
        DetrResizeShortestEdge([180, 260], 400, "range", interp=Image.NEAREST),
    ]
    for _ in range(4):
        out = _mapper(nearest)(colour_coded)
        assert out["image"].shape[1:] == out["instances"].image_size
        _check_alignment(out, exact=True)


def test_alignment_with_the_default_detr_augmentation(colour_coded):
    cfg = get_cfg()
    add_detr_config(cfg)
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (200, 232, 264), 400
    cfg.INPUT.CROP.ENABLED, cfg.INPUT.CROP.TYPE = True, "absolute_range"
    cfg.INPUT.CROP.RESIZE_SHORT_EDGE, cfg.INPUT.CROP.SIZE = (300,), (150, 250)
    mapper = DetrPanopticDatasetMapper(cfg, is_train=True)
    np.random.seed(3)
    for _ in range(4):
        _check_alignment(mapper(colour_coded), exact=False)


def test_segments_cropped_away_are_dropped_and_boxes_follow_the_crop(sample_dicts):
    d = sample_dicts[0]
    out = _mapper([T.CropTransform(400, 150, 200, 120)])(d)  # x0, y0, w, h
    inst = out["instances"]
    pan = rgb2id(np.asarray(Image.open(d["pan_seg_file_name"]).convert("RGB")))[150:270, 400:600]
    present = [s for s in d["segments_info"] if (pan == s["id"]).any()]
    assert 0 < len(inst) == len(present) < len(d["segments_info"])
    assert inst.image_size == (120, 200)
    for k, s in enumerate(present):
        ys, xs = np.nonzero(pan == s["id"])
        assert inst.gt_boxes.tensor[k].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert inst.gt_classes[k] == s["category_id"]


def test_empty_image_gives_zero_instances(tmp_path, sample_dicts):
    d = copy.deepcopy(sample_dicts[1])
    png = tmp_path / "empty.png"
    Image.fromarray(np.zeros((d["height"], d["width"], 3), np.uint8)).save(png)
    d.update(pan_seg_file_name=str(png), segments_info=[])
    inst = _mapper([T.ResizeTransform(360, 640, 90, 160)])(d)["instances"]
    assert len(inst) == 0 and inst.image_size == (90, 160)
    assert inst.gt_boxes.tensor.shape == (0, 4) and inst.gt_masks.tensor.shape == (0, 90, 160)
    assert inst.gt_classes.dtype == torch.int64 and inst.gt_is_crowd.dtype == torch.bool


def test_inference_mode_resizes_and_keeps_fields_without_instances(sample_dicts):
    cfg = get_cfg()
    add_detr_config(cfg)
    cfg.INPUT.FORMAT, cfg.INPUT.RESIZE_ROUNDING = "RGB", "truncate"
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 400, 1333
    out = DetrPanopticDatasetMapper(cfg, is_train=False)(sample_dicts[0])
    assert "instances" not in out and out["image"].shape == (3, 400, 599)  # 640*400/427 truncated
    assert (out["height"], out["width"], out["image_id"]) == (427, 640, 142238)
    assert out["file_name"] == sample_dicts[0]["file_name"]


def test_unknown_png_id_is_an_error_naming_the_png(sample_dicts):
    d = copy.deepcopy(sample_dicts[0])
    removed = d["segments_info"].pop(4)
    with pytest.raises(ValueError) as e:
        _mapper([])(d)
    msg = str(e.value)
    assert d["pan_seg_file_name"] in msg and str(removed["id"]) in msg and "segments_info" in msg
    assert str(tuple(int(c) for c in id2rgb(removed["id"]))) in msg


def test_grayscale_panoptic_png_is_an_error(tmp_path, sample_dicts):
    d = copy.deepcopy(sample_dicts[0])
    png = tmp_path / "bad.png"
    Image.open(d["pan_seg_file_name"]).convert("L").save(png)
    d["pan_seg_file_name"] = str(png)
    with pytest.raises(ValueError, match="pan_seg_file_name") as e:
        _mapper([])(d)
    assert str(png) in str(e.value) and "grayscale" in str(e.value)


def test_rgba_panoptic_png_reads_as_its_rgb(tmp_path, sample_dicts):
    """The one panoptic PNG reader ignores alpha, as panopticapi's
    rgb2id(np.array(Image.open(png)))."""
    d = copy.deepcopy(sample_dicts[0])
    png = tmp_path / "rgba.png"
    Image.open(d["pan_seg_file_name"]).convert("RGBA").save(png)
    expected = _mapper([])(d)
    out = _mapper([])(dict(d, pan_seg_file_name=str(png)))
    assert torch.equal(out["instances"].gt_masks.tensor, expected["instances"].gt_masks.tensor)
    assert torch.equal(out["instances"].gt_classes, expected["instances"].gt_classes)


def test_grayscale_image_is_converted_and_rgba_image_warns(tmp_path, sample_dicts, caplog):
    d = copy.deepcopy(sample_dicts[0])
    gray = tmp_path / "gray.jpg"
    Image.open(d["file_name"]).convert("L").save(gray)
    out = _mapper([])(dict(d, file_name=str(gray)))
    assert out["image"].shape[0] == 3 and torch.equal(out["image"][0], out["image"][2])
    rgba = tmp_path / "rgba.png"
    Image.open(d["file_name"]).convert("RGBA").save(rgba)
    with caplog.at_level(logging.WARNING):
        out = _mapper([])(dict(d, file_name=str(rgba)))
    assert out["image"].shape == (3, 427, 640)
    assert "alpha channel" in caplog.text and "rgba.png" in caplog.text


def test_missing_files_and_size_mismatch_are_clear_errors(tmp_path, sample_dicts):
    d = sample_dicts[0]
    with pytest.raises(FileNotFoundError, match=r"image not found \(file_name\): .*nope.jpg"):
        _mapper([])(dict(d, file_name=str(tmp_path / "nope.jpg")))
    with pytest.raises(
        FileNotFoundError, match=r"panoptic PNG not found \(pan_seg_file_name\): .*nope.png"
    ):
        _mapper([])(dict(d, pan_seg_file_name=str(tmp_path / "nope.png")))
    with pytest.raises(
        ValueError, match=r"000000439180.png \(pan_seg_file_name\) is 640x360 but its image"
    ):
        _mapper([])(dict(d, pan_seg_file_name=sample_dicts[1]["pan_seg_file_name"]))
    with pytest.raises(SizeMismatchError, match="000000142238.jpg"):
        _mapper([])(dict(d, height=100))
