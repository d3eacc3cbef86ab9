"""DetrPanopticPredictor and tools/demo.py on the real COCO sample with a tiny random model:
Visualizer overlay, query-mask grid, and the COCO panoptic PNG + JSON round trip through rgb2id."""

import json
import os
import shutil

import cv2
import numpy as np
import pytest
import torch
from panopticapi.utils import rgb2id
from PIL import Image

from tests.utils.paths import COCO_SAMPLE
from tests.utils.scripts import load_script


def test_predictor_outputs_at_image_size(sample_cfg):
    from detr_d2.predictor import DetrPanopticPredictor

    cfg, _ = sample_cfg
    pred = DetrPanopticPredictor(cfg)
    img = cv2.imread(os.path.join(COCO_SAMPLE, "input_images", "000000142238.jpg"))
    out = pred(img)
    ids, segs = out["panoptic_seg"]
    assert ids.shape == img.shape[:2] and segs
    assert all(0 <= s["category_id"] < 133 for s in segs)
    same, raw = pred.raw(img)
    assert torch.equal(same["panoptic_seg"][0], ids)
    assert raw["pred_logits"].shape == (10, 134) and raw["pred_masks"].shape == (10, 40, 60)
    with pytest.raises(ValueError, match="HxWx3 BGR"):
        pred(img[:, :, 0])


def test_demo_writes_overlays_grid_and_panoptic_png_json(sample_cfg, tmp_path):
    demo = load_script("demo")

    _, cfg_path = sample_cfg
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in os.listdir(os.path.join(COCO_SAMPLE, "input_images")):
        shutil.copy(os.path.join(COCO_SAMPLE, "input_images", f), inputs / f)
    out = tmp_path / "out"
    rc = demo.main(
        [
            "--config-file",
            cfg_path,
            "--input",
            str(inputs / "000000142238.jpg"),
            str(inputs / "*439180*"),
            "--output",
            str(out),
            "--save-query-masks",
            "--save-panoptic",
        ]
    )
    assert rc == 0
    for stem in ("000000142238", "000000439180"):
        overlay = cv2.imread(str(out / f"{stem}_panoptic.jpg"))
        original = cv2.imread(str(inputs / f"{stem}.jpg"))
        assert overlay.shape == original.shape
        assert np.abs(overlay.astype(int) - original.astype(int)).mean() > 1  # something was drawn
        assert cv2.imread(str(out / f"{stem}_queries.jpg")) is not None
    data = json.loads((out / "predictions.json").read_text())
    cats = {c["id"]: c for c in data["categories"]}
    assert len(cats) == 133
    assert len(data["annotations"]) == 2
    for ann in data["annotations"]:
        ids = rgb2id(np.asarray(Image.open(out / "panoptic" / ann["file_name"]), dtype=np.uint32))
        listed = {s["id"] for s in ann["segments_info"]}
        assert set(np.unique(ids)) - {0} == listed
        for s in ann["segments_info"]:
            assert s["category_id"] in cats  # dataset ids, not contiguous
            assert s["area"] == int((ids == s["id"]).sum())
    # inputs untouched
    assert sorted(os.listdir(inputs)) == ["000000142238.jpg", "000000439180.jpg"]


def test_demo_bad_input(sample_cfg, tmp_path, capsys):
    demo = load_script("demo")

    _, cfg_path = sample_cfg
    rc = demo.main(
        [
            "--config-file",
            cfg_path,
            "--input",
            str(tmp_path / "no_such.jpg"),
            "--output",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 1
    assert (
        capsys.readouterr().err
        == f"error: --input '{tmp_path / 'no_such.jpg'}': no such file or folder\n"
    )
    assert not (tmp_path / "o").exists()
