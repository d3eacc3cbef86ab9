"""Official DETR checkpoint -> detr_d2 names: every key maps, the backbone computes what torchvision
computes, class slots are remapped to the right rows, and bad inputs are refused clearly."""

import argparse
import copy
import logging
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from detr_d2.checkpoint import convert_official_detr
from detr_d2.checkpoint.checkpoint_io import extract_state_dict, load_torch_file
from detr_d2.checkpoint.detr_converter import class_rows_from_mapping, dataset_class_mapping
from detr_d2.checkpoint.official_layout import infer_official_layout
from tests.utils.official_detr import (
    OfficialDETRsegm,
    build_official_detr,
    randomize_frozen_batchnorm_,
)
from tests.utils.scripts import load_script

SMALL = dict(hidden_dim=128, enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=7)


def d2_resnet(depth: int):
    """Detectron2 ResNet with uninitialised (``torch.empty``) weights: tests load them all."""
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    with torch.device("meta"):  # skip the costly random init
        model = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    return model.to_empty(device="cpu")


def meta_official_state_dict(**kwargs):
    with torch.device("meta"):
        return build_official_detr(**kwargs).state_dict()


def load_tool(name):
    return load_script(name)


@pytest.fixture(scope="module")
def official_r50_small():
    """An 'official checkpoint' with random weights and non-trivial frozen-BN statistics."""
    torch.manual_seed(0)
    model = randomize_frozen_batchnorm_(OfficialDETRsegm(**SMALL)).eval()
    return model, {k: v.clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------ names
def test_r50_every_official_key_maps_onto_detr_d2_names():
    src = meta_official_state_dict()  # the R50 panoptic checkpoint layout: 490 tensors
    out = convert_official_detr(src)
    assert len(out) == 490
    backbone = {k[len("backbone.") :]: v.shape for k, v in out.items() if k.startswith("backbone.")}
    d2 = d2_resnet(50).state_dict()
    assert backbone == {
        k: v.shape for k, v in d2.items()
    }  # all 265, including the 4 buffers of 53 BNs
    others = {k: v.shape for k, v in out.items() if not k.startswith("backbone.")}
    expected = {
        (k[len("detr.") :] if k.startswith("detr.") else k): v.shape
        for k, v in src.items()
        if not k.startswith("detr.backbone.")
    }
    assert others == expected
    assert "transformer.decoder.norm.weight" in others and "mask_head.adapter1.weight" in others
    assert out["backbone.res4.5.conv3.norm.running_var"].shape == (1024,)


def test_layout_inference_and_r101_and_detection_checkpoints():
    layout = infer_official_layout(meta_official_state_dict(depth=101))
    assert (layout.masks, layout.depth, layout.hidden_dim, layout.nheads, layout.num_classes) == (
        True,
        101,
        256,
        8,
        250,
    )
    assert (layout.enc_layers, layout.dec_layers, layout.num_queries, layout.pre_norm) == (
        6,
        6,
        100,
        False,
    )
    assert len(convert_official_detr(meta_official_state_dict(depth=101))) == 745
    det = convert_official_detr(meta_official_state_dict(masks=False, num_classes=91))
    assert len(det) == 458 and not any(k.startswith(("mask_head", "bbox_attention")) for k in det)
    assert det["class_embed.weight"].shape == (92, 256)


# ------------------------------------------------------------------------------------------
# numerics
def test_backbone_stem_and_blocks_equal_torchvision(official_r50_small):
    model, src = official_r50_small
    out = convert_official_detr(src)
    d2 = d2_resnet(50).eval()
    result = d2.load_state_dict(
        {k[len("backbone.") :]: v for k, v in out.items() if k.startswith("backbone.")}, strict=True
    )
    assert not result.missing_keys and not result.unexpected_keys
    body = model.detr.backbone[0].body
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        tv_stem = body.maxpool(body.relu(body.bn1(body.conv1(x))))
        d2_stem = d2.stem(x)
        assert torch.allclose(d2_stem, tv_stem, rtol=1e-5, atol=1e-5)
        tv_block = body.layer1[0](tv_stem)
        assert torch.allclose(d2.res2[0](tv_stem), tv_block, rtol=1e-5, atol=1e-5)
        tv_res3 = body.layer2(
            body.layer1(tv_stem)
        )  # first res3 block carries the stride (3x3 conv)
        assert torch.allclose(d2.res3(d2.res2(tv_stem)), tv_res3, rtol=1e-4, atol=1e-4)
        # sensitivity: Detectron2's default STRIDE_IN_1X1=True (stride on conv1) changes res3
        caffe_block = copy.deepcopy(d2.res3[0])
        caffe_block.conv1.stride, caffe_block.conv2.stride = (2, 2), (1, 1)
        caffe_res3 = d2.res3[1:](caffe_block(d2.res2(tv_stem)))
        assert caffe_res3.shape == tv_res3.shape and (caffe_res3 - tv_res3).abs().max() > 1e-2
    assert not torch.equal(out["backbone.res2.0.conv1.norm.running_var"], torch.ones(64))


def test_missing_bn_buffer_is_refused_not_silently_identity(official_r50_small):
    _, src = official_r50_small
    out = convert_official_detr(src)
    # The trap: Detectron2's FrozenBatchNorm2d fills a missing running_var with ones, even
    # strict=True.
    broken = {k[len("backbone.") :]: v for k, v in out.items() if k.startswith("backbone.")}
    del broken["res3.1.conv2.norm.running_var"]
    assert not d2_resnet(50).load_state_dict(broken, strict=True).missing_keys
    # ... so the converter itself must refuse a source without it.
    bad = dict(src)
    del bad["detr.backbone.0.body.layer2.1.bn2.running_var"]
    with pytest.raises(
        ValueError,
        match=r"1 missing key\(s\): detr\.backbone\.0\.body\.layer2\.1\.bn2\.running_var",
    ):
        convert_official_detr(bad, source="ckpt.pth")


# ------------------------------------------------------------------------------------------ classes
def test_coco_panoptic_class_remap_picks_dataset_id_rows(official_r50_small):
    _, src = official_r50_small
    mapping = dataset_class_mapping("coco_2017_val_panoptic")
    assert (
        len(mapping) == 133
        and mapping[1] == 0
        and mapping[90] == 79
        and mapping[92] == 80
        and mapping[200] == 132
    )
    out = convert_official_detr(src, class_slots=mapping)
    w, b = src["detr.class_embed.weight"], src["detr.class_embed.bias"]
    assert out["class_embed.weight"].shape == (134, 128) and out["class_embed.bias"].shape == (134,)
    for dataset_id, contiguous_id in mapping.items():
        assert torch.equal(out["class_embed.weight"][contiguous_id], w[dataset_id])
        assert torch.equal(out["class_embed.bias"][contiguous_id], b[dataset_id])
    assert torch.equal(out["class_embed.weight"][133], w[250]) and torch.equal(
        out["class_embed.bias"][133], b[250]
    )
    kept = convert_official_detr(src)  # "keep": untouched 251 rows
    assert torch.equal(kept["class_embed.weight"], w)


def test_class_mapping_validation():
    assert class_rows_from_mapping({7: 1, 3: 0}, num_slots=10) == [3, 7, 9]
    with pytest.raises(ValueError, match="contiguous id 0 is used by dataset ids 3 and 7"):
        class_rows_from_mapping({3: 0, 7: 0}, num_slots=10)
    with pytest.raises(ValueError, match=r"contiguous ids must be exactly 0\.\.1"):
        class_rows_from_mapping({3: 0, 7: 2}, num_slots=10)
    with pytest.raises(ValueError, match=r"dataset ids \[9\] have no row .*row 9 is no-object"):
        class_rows_from_mapping({3: 0, 9: 1}, num_slots=10)
    with pytest.raises(ValueError, match="not registered"):
        dataset_class_mapping("no_such_dataset_xyz")
    with pytest.raises(ValueError, match="class_slots must be 'keep'"):
        convert_official_detr(meta_official_state_dict(**SMALL), class_slots="contiguous")


# ------------------------------------------------------------------------------------------
# refusals
def test_refusals_name_the_offending_keys():
    src = meta_official_state_dict(**SMALL)
    missing = dict(src)
    del missing["detr.transformer.decoder.layers.1.norm2.bias"]
    with pytest.raises(ValueError) as e:
        convert_official_detr(missing, source="my.pth")
    msg = str(e.value)
    assert (
        msg.startswith("my.pth: does not match the official DETR layout")
        and "ResNet-50, hidden 128" in msg
    )
    assert "1 missing key(s): detr.transformer.decoder.layers.1.norm2.bias" in msg

    unexpected = dict(src)
    unexpected["detr.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"1 unexpected key\(s\): detr\.extra_head\.weight"):
        convert_official_detr(unexpected)

    wrong = dict(src)
    wrong["detr.transformer.encoder.layers.0.linear2.weight"] = torch.zeros(128, 65)
    with pytest.raises(ValueError, match=r"linear2\.weight: got \(128, 65\), expected \(128, 64\)"):
        convert_official_detr(wrong)

    with pytest.raises(
        ValueError, match="not an official DETR state dict: cannot find .*class_embed.weight"
    ):
        convert_official_detr({"conv1.weight": torch.zeros(64, 3, 7, 7)}, source="resnet.pth")


# ------------------------------------------------------------------------------------------ files +
# tool
def test_training_checkpoint_with_pickled_args_loads_and_is_unwrapped(tmp_path, caplog):
    weights = {"a": torch.ones(2)}
    plain, training = str(tmp_path / "plain.pth"), str(tmp_path / "training.pth")
    torch.save({"model": weights}, plain)
    torch.save(
        {
            "model": weights,
            "optimizer": {"state": {}},
            "epoch": 3,
            "args": argparse.Namespace(lr=1e-4),
        },
        training,
    )
    with caplog.at_level(logging.WARNING):
        assert torch.equal(extract_state_dict(load_torch_file(plain), plain)["a"], weights["a"])
        sd = extract_state_dict(load_torch_file(training), training)
    assert not caplog.records  # the Namespace passes the restricted unpickler: no fallback
    assert list(sd) == ["a"]
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: cannot be read by torch.load"):
        load_torch_file(str(tmp_path / "junk.pth"))
    with pytest.raises(ValueError, match="expected a dict with a 'model' state dict"):
        extract_state_dict({"epoch": 3}, "x.pth")


def test_convert_tool_writes_d2_checkpoint_and_protects_files(tmp_path, official_r50_small, capsys):
    tool = load_tool("convert_detr_checkpoint")
    _, src = official_r50_small
    source, output = str(tmp_path / "official.pth"), str(tmp_path / "converted.pth")
    torch.save({"model": src}, source)
    before = os.path.getmtime(source)

    assert (
        tool.main(["--source", source, "--output", output, "--dataset", "coco_2017_val_panoptic"])
        == 0
    )
    ckpt = torch.load(output, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"model", "__author__", "matching_heuristics"}
    assert ckpt["__author__"] == "detr_d2" and ckpt["matching_heuristics"] is False
    assert list(ckpt["model"]) == list(convert_official_detr(src))
    # --dataset maps by class name; for COCO's own panoptic classes that is the dataset-id rows
    by_id = convert_official_detr(src, class_slots=dataset_class_mapping("coco_2017_val_panoptic"))
    assert torch.equal(ckpt["model"]["class_embed.weight"], by_id["class_embed.weight"])
    assert torch.equal(ckpt["model"]["class_embed.bias"], by_id["class_embed.bias"])
    out = capsys.readouterr().out
    assert "MODEL.DETR.NUM_CLASSES 133 MODEL.DETR.CLASS_SLOTS contiguous" in out
    assert "133 of 133 classes of coco_2017_val_panoptic copied from the checkpoint, 0 new" in out

    assert tool.main(["--source", source, "--output", output]) == 1  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err
    assert tool.main(["--source", source, "--output", source, "--overwrite"]) == 1
    assert "refusing to overwrite the source" in capsys.readouterr().err
    assert os.path.getmtime(source) == before
    assert tool.main(["--source", source, "--output", output, "--overwrite"]) == 0
    assert torch.load(output, weights_only=True)["model"]["class_embed.weight"].shape == (251, 128)
    assert sorted(os.listdir(tmp_path)) == ["converted.pth", "official.pth"]  # no temp files left
    assert (
        tool.main(["--source", output, "--output", str(tmp_path / "again.pth")]) == 1
    )  # already converted
    assert "already has Detectron2 / detr_d2 names" in capsys.readouterr().err

    bad = {k: v for k, v in src.items() if not k.startswith("mask_head.lay5")}
    torch.save({"model": bad}, str(tmp_path / "bad.pth"))
    assert (
        tool.main(["--source", str(tmp_path / "bad.pth"), "--output", str(tmp_path / "out2.pth")])
        == 1
    )
    err = capsys.readouterr().err
    assert (
        "bad.pth" in err and "2 missing key(s): mask_head.lay5.weight, mask_head.lay5.bias" in err
    )
    assert not os.path.exists(tmp_path / "out2.pth")
