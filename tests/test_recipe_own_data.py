"""The "Train on your own data" recipe (docs/own_data.md) end to end, on CPU, with its commands as
written.

The commands run in a scratch folder that has the repository's ``configs/`` (relative paths as in
the docs), through the tools' own entry points. Differences from the docs, all for speed: the
official COCO checkpoints (which the docs download) are random ones of the same formats built here
with the test oracle (ResNet-18, hidden 128, 1+1 layers, 10 queries); the example dataset has 6 + 3
images of 64 px; the model-size overrides ``TINY`` are added to every command that builds a model,
and ``SMOKE`` runs 3 iterations at 64 px. The example's classes differ from COCO's in number (6) and
partly in name: "sports ball" is a COCO thing; "sky", "grass", "water" are COCO panoptic stuff under
other names ("sky-other-merged", ...); "crate" and "warning sign" are new.
"""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from detr_d2.checkpoint.class_names import coco_detection_class_names
from detr_d2.data.panoptic_io import read_panoptic_ids
from tests.utils.official_detr import build_official_detr, randomize_frozen_batchnorm_
from tests.utils.paths import ROOT
from tests.utils.scripts import load_script

OFFICIAL = dict(
    depth=18,
    hidden_dim=128,
    nheads=8,
    enc_layers=1,
    dec_layers=1,
    dim_feedforward=128,
    num_queries=10,
)
TINY = (
    "MODEL.RESNETS.DEPTH 18 MODEL.RESNETS.RES2_OUT_CHANNELS 64 MODEL.DETR.HIDDEN_DIM 128 "
    "MODEL.DETR.ENC_LAYERS 1 "
    "MODEL.DETR.DEC_LAYERS 1 MODEL.DETR.DIM_FEEDFORWARD 128 MODEL.DETR.NUM_OBJECT_QUERIES 10"
).split()
SMOKE = (
    "SOLVER.MAX_ITER 3 SOLVER.IMS_PER_BATCH 2 INPUT.MIN_SIZE_TRAIN (64,) INPUT.MAX_SIZE_TRAIN 64 "
    "INPUT.MIN_SIZE_TEST 64 INPUT.MAX_SIZE_TEST 64 INPUT.CROP.ENABLED False "
    "DATALOADER.NUM_WORKERS 0 MODEL.DEVICE cpu"
).split()
DATA = "datasets/own_data_example"
# COCO panoptic ids of the classes the random "COCO panoptic model" is made to predict
SKY, GRASS, PERSON = 187, 193, 1


def _official_checkpoints(weights: str) -> None:
    """Random official DETR detection (92 logits) and panoptic (251) checkpoints, saved as DETR
    saves them. The panoptic one predicts sky / grass / person confidently, so the stuff tool sees
    stuff and things."""
    os.makedirs(weights)
    torch.manual_seed(0)
    det = randomize_frozen_batchnorm_(build_official_detr(masks=False, num_classes=91, **OFFICIAL))
    torch.save({"model": det.state_dict()}, os.path.join(weights, "detr-r50-e632da11.pth"))
    pan = randomize_frozen_batchnorm_(build_official_detr(masks=True, num_classes=250, **OFFICIAL))
    state = pan.state_dict()
    for row, bias in ((SKY, 20.0), (GRASS, 20.0), (PERSON, 15.0)):
        state["detr.class_embed.weight"][row] *= 10
        state["detr.class_embed.bias"][row] = bias
    torch.save({"model": state}, os.path.join(weights, "detr-r50-panoptic-00ce5173.pth"))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_train_on_your_own_data_recipe(workdir, capsys, caplog):
    caplog.set_level(logging.INFO)
    # 0. the example dataset ("your data") and the "downloaded" COCO checkpoints
    prepare = load_script("prepare_own_data_example", folder="datasets")
    assert prepare.main(["--num-train", "6", "--num-val", "3", "--image-size", "64"]) == 0
    _official_checkpoints("weights")

    # 1. COCO detection checkpoint -> stage-1 start, class head mapped to the dataset's classes by
    #    name
    convert = load_script("convert_detr_checkpoint")
    assert convert.main([
        "--source", "weights/detr-r50-e632da11.pth", "--output", "weights/detr_r50_own_example_stage1_init.pth",  # noqa: E501
        "--dataset", "own_example_train", "--register-file", f"{DATA}/datasets.yaml",
    ]) == 0  # fmt: skip
    assert (
        "class head: 1 of 6 classes of own_example_train copied from the checkpoint, 5 new"
        in capsys.readouterr().out
    )
    table = [r.getMessage() for r in caplog.records if "class head transferred" in r.getMessage()]
    assert (
        len(table) == 1
        and "sports ball   0   sports ball   37" in table[0]
        and "sky           3   -" in table[0]
    )
    init = _load("weights/detr_r50_own_example_stage1_init.pth")
    source = torch.load("weights/detr-r50-e632da11.pth")["model"]
    assert init["class_embed.weight"].shape == (7, 128)
    ball = coco_detection_class_names().index("sports ball")
    assert torch.equal(
        init["class_embed.weight"][0], source["class_embed.weight"][ball]
    )  # sports ball: copied
    assert torch.equal(
        init["class_embed.bias"][6], source["class_embed.bias"][91]
    )  # no-object: kept
    assert not any(
        torch.equal(init["class_embed.weight"][i], r)
        for i in range(1, 6)
        for r in source["class_embed.weight"]
    )
    # COCO panoptic checkpoint (its mask head for stage 2, the whole model for the stuff labels)
    assert (
        convert.main(
            [
                "--source",
                "weights/detr-r50-panoptic-00ce5173.pth",
                "--output",
                "weights/detr_r50_panoptic_coco.pth",
            ]
        )
        == 0
    )

    # 2. thing-only annotations + the COCO panoptic model's stuff -> a panoptic training set
    stuff_tool = load_script("add_stuff_from_model")
    assert stuff_tool.main([
        "--instances-json", f"{DATA}/instances_train.json", "--image-root", f"{DATA}/train",
        "--config-file", "configs/coco_panoptic/detr_r50_official.yaml", "--output", f"{DATA}/model_stuff_train",  # noqa: E501
        "--stuff-map", "configs/own_data/stuff_map_coco_to_example.yaml", "--workers", "2",
        "--opts", "MODEL.WEIGHTS", "weights/detr_r50_panoptic_coco.pth", *TINY, "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",  # noqa: E501
    ]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "annotated things" in printed and "model stuff" in printed
    with open(f"{DATA}/model_stuff_train/panoptic.json") as f:
        model_stuff = json.load(f)
    with open(f"{DATA}/panoptic_train.json") as f:
        ground_truth = json.load(f)
    assert [(c["id"], c["isthing"]) for c in model_stuff["categories"]] == [
        (c["id"], c["isthing"]) for c in ground_truth["categories"]
    ]
    stuff_pixels = 0
    for ann, gt in zip(model_stuff["annotations"], ground_truth["annotations"]):
        ids = read_panoptic_ids(f"{DATA}/model_stuff_train/panoptic/{ann['file_name']}")
        gt_ids = read_panoptic_ids(f"{DATA}/panoptic_train/{gt['file_name']}")
        for kind in (1, 2, 3):  # every thing pixel is the annotation's, with the same segments
            mine = sorted(
                int((ids == s["id"]).sum())
                for s in ann["segments_info"]
                if s["category_id"] == kind
            )
            theirs = sorted(
                int((gt_ids == s["id"]).sum())
                for s in gt["segments_info"]
                if s["category_id"] == kind
            )
            assert mine == theirs
        stuff_pixels += sum(
            s["area"] for s in ann["segments_info"] if s["category_id"] in (4, 5, 6)
        )
    assert stuff_pixels > 0

    # 3. stage 1: detection fine-tuning (boxes of things and stuff), on the model-stuff training set
    train_net = load_script("train_net")
    train_net.cli([
        "--config-file", "configs/own_data/detr_r50_stage1_detection.yaml",
        "--register-dataset", "own_example_train_model_stuff", f"{DATA}/train", f"{DATA}/model_stuff_train/panoptic",  # noqa: E501
        f"{DATA}/model_stuff_train/panoptic.json", *SMOKE, *TINY, "DATASETS.TRAIN", "('own_example_train_model_stuff',)",  # noqa: E501
    ])  # fmt: skip
    stage1 = _load("output/own_data/stage1/model_final.pth")
    assert torch.equal(
        stage1["backbone.res2.0.conv1.weight"], init["backbone.res2.0.conv1.weight"]
    )  # loaded (frozen res2)
    assert not torch.equal(stage1["class_embed.weight"], init["class_embed.weight"])  # trained
    assert not any(k.startswith(("mask_head.", "bbox_attention.")) for k in stage1)
    # box AP of the things on own_example_val (its json_file): COCOEvaluator's predictions file
    assert os.path.exists(
        "output/own_data/stage1/inference/own_example_val/coco_instances_results.json"
    )

    # 4. stage 2: the mask head from the COCO panoptic checkpoint, on the frozen stage-1 detector
    train_net.cli(
        ["--config-file", "configs/own_data/detr_r50_stage2_panoptic.yaml", *SMOKE, *TINY]
    )
    stage2 = _load("output/own_data/stage2/model_final.pth")
    detector = [k for k in stage1 if not k.startswith(("mask_head.", "bbox_attention."))]
    assert all(torch.equal(stage2[k], stage1[k]) for k in detector)  # frozen
    coco = _load("weights/detr_r50_panoptic_coco.pth")
    head = [k for k in stage2 if k.startswith(("mask_head.", "bbox_attention."))]
    assert head and any(not torch.equal(stage2[k], coco[k]) for k in head)  # trained from there
    log = open("output/own_data/stage2/log.txt").read()
    assert "Initialised the mask head from weights/detr_r50_panoptic_coco.pth" in log

    # 5. evaluation in a fresh process from the run's saved config (it registers the datasets again)
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", "output/own_data/stage2/config.yaml",  # noqa: E501
         "--eval-only", "MODEL.WEIGHTS", "output/own_data/stage2/model_final.pth"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "copypaste: PQ,SQ,RQ" in proc.stdout + proc.stderr
    with open("output/own_data/stage2/inference/own_example_val/panoptic_per_class.json") as f:
        per_class = json.dumps(json.load(f))
    assert all(
        name in per_class
        for name in ("sports ball", "crate", "warning sign", "sky", "grass", "water")
    )

    # 6. demo on the validation images, with the dataset's class names
    demo = load_script("demo")
    assert demo.main([
        "--config-file", "output/own_data/stage2/config.yaml", "--input", f"{DATA}/val", "--output", "output/own_data/demo",  # noqa: E501
        "--save-panoptic", "--opts", "MODEL.WEIGHTS", "output/own_data/stage2/model_final.pth",
    ]) == 0  # fmt: skip
    assert sorted(f for f in os.listdir("output/own_data/demo") if f.endswith("_panoptic.jpg")) == [
        "000000_panoptic.jpg",
        "000001_panoptic.jpg",
        "000002_panoptic.jpg",
    ]
    with open("output/own_data/demo/predictions.json") as f:
        names = [c["name"] for c in json.load(f)["categories"]]
    assert names == ["sports ball", "crate", "warning sign", "sky", "grass", "water"]
    assert np.array_equal(
        sorted(os.listdir(f"{DATA}/val")), ["000000.jpg", "000001.jpg", "000002.jpg"]
    )  # inputs kept
