"""Hugging Face transformers DETR checkpoints -> detr_d2 (issue 14).

Randomly initialised transformers models (built offline, no download) are saved with
``save_pretrained`` (safetensors and .bin), converted, loaded into ``DetrPanoptic`` and run on the
same normalised COCO image: logits, boxes and mask logits must match. Covered: timm and native
ResNet backbones (ResNet-18 BasicBlocks, ResNet-50 Bottlenecks: stride placement),
DetrForSegmentation and DetrForObjectDetection, both key namings (4.x and 5.x), the full-size hub
layouts (on the meta device), strict refusals naming the bad HF tensor, class names from
``id2label``, and the tool's documented examples. The models are real models of the installed
transformers: 4.57 on the pinned stack (torch 2.3.1; transformers 5 needs torch >= 2.6), 5.x on the
newest, whose modules and state dicts carry the 5.x names (its save_pretrained files keep the 4.x
keys). Skipped when transformers / timm / safetensors are not installed (CI installs them).
"""

import json
import os
import re
import shlex

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from PIL import Image
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("timm")
pytest.importorskip("safetensors")

from transformers import DetrConfig, DetrForObjectDetection, DetrForSegmentation, ResNetConfig  # noqa: E402

from detr_d2.checkpoint import convert_detr_file, retarget_classes  # noqa: E402
from detr_d2.checkpoint.class_names import coco_panoptic_class_names  # noqa: E402
from detr_d2.checkpoint.hf_detr import hf_detr_to_official  # noqa: E402
from detr_d2.checkpoint.official_layout import OfficialDETRLayout, official_state_dict_spec  # noqa: E402
from tests.utils.configs import tiny_detr_cfg  # noqa: E402
from tests.utils.paths import COCO_SAMPLE  # noqa: E402
from tests.utils.scripts import load_script  # noqa: E402

SMALL = dict(
    d_model=128,
    encoder_layers=1,
    decoder_layers=2,
    encoder_ffn_dim=128,
    decoder_ffn_dim=128,
    num_queries=10,
    num_labels=5,
    use_pretrained_backbone=False,
)
NATIVE_R50 = dict(
    use_timm_backbone=False,
    backbone=None,
    backbone_config=ResNetConfig(
        depths=[3, 4, 6, 3],
        layer_type="bottleneck",
        hidden_sizes=[256, 512, 1024, 2048],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    ),
)
IMAGE = os.path.join(COCO_SAMPLE, "input_images", "000000439180.jpg")
# the installed transformers' major version: its models use that version's module and key names
HF_MAJOR = int(transformers.__version__.split(".")[0])
# transformers 5.x renames, exactly as its conversion_mapping.py "detr" entry (4.x name -> 5.x name)
V5_RENAMES = [
    ("backbone.conv_encoder", "backbone"),
    ("out_proj", "o_proj"),
    (r"layers.(\d+).fc1", r"layers.\1.mlp.fc1"),
    (r"layers.(\d+).fc2", r"layers.\1.mlp.fc2"),
    ("bbox_attention.q_linear", "bbox_attention.q_proj"),
    ("bbox_attention.k_linear", "bbox_attention.k_proj"),
    ("mask_head.lay1", "mask_head.conv1.conv"),
    ("mask_head.gn1", "mask_head.conv1.norm"),
    ("mask_head.lay2", "mask_head.conv2.conv"),
    ("mask_head.gn2", "mask_head.conv2.norm"),
    ("mask_head.adapter1", "mask_head.fpn_stages.0.fpn_adapter"),
    ("mask_head.lay3", "mask_head.fpn_stages.0.refine.conv"),
    ("mask_head.gn3", "mask_head.fpn_stages.0.refine.norm"),
    ("mask_head.adapter2", "mask_head.fpn_stages.1.fpn_adapter"),
    ("mask_head.lay4", "mask_head.fpn_stages.1.refine.conv"),
    ("mask_head.gn4", "mask_head.fpn_stages.1.refine.norm"),
    ("mask_head.adapter3", "mask_head.fpn_stages.2.fpn_adapter"),
    ("mask_head.lay5", "mask_head.fpn_stages.2.refine.conv"),
    ("mask_head.gn5", "mask_head.fpn_stages.2.refine.norm"),
    ("mask_head.out_lay", "mask_head.output_conv"),
]
# the same, 5.x name -> 4.x name
V4_RENAMES = [
    (r"layers.(\d+).mlp.fc(\d)", r"layers.\1.fc\2")
    if old.startswith("layers")
    else (re.escape(new), old)
    for old, new in V5_RENAMES
]


def _rename(state_dict, renames):
    out = {}
    for key, value in state_dict.items():
        for old, new in renames:
            key = re.sub(old, new, key)
        out[key] = value
    return out


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Weights that make every output informative: HF's own init (std 0.02 everywhere, identity
    frozen BN) gives near-constant outputs, which would hide swapped or misplaced tensors."""
    g = torch.Generator().manual_seed(seed)

    def rand(shape, scale):
        return torch.randn(shape, generator=g) * scale

    for m in model.modules():
        if type(m).__name__.endswith("FrozenBatchNorm2d"):
            n = m.weight.numel()
            m.weight.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.copy_(rand(n, 0.1))
            m.running_mean.copy_(rand(n, 0.1))
            m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(rand(m.weight.shape, (2.0 / fan_in) ** 0.5))
            if m.bias is not None:
                m.bias.copy_(rand(m.bias.shape, 0.1))
        elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            m.weight.copy_(1 + rand(m.weight.shape, 0.1))
            m.bias.copy_(rand(m.bias.shape, 0.1))
        elif isinstance(m, nn.Embedding):
            m.weight.copy_(rand(m.weight.shape, 1.0))
    # transformers' own ResNet-50 (its bottlenecks' last norms are "...layer.2.normalization"; timm
    # backbones have none): the residual sums grow stage after stage (feature std ~800 at res5 on
    # transformers 5), which leaves every query nearly the same class scores and mask: damp each
    # bottleneck's last norm (as zero-gamma residual init does) and widen the class head
    last_norms = [m for n, m in model.named_modules() if n.endswith(".layer.2.normalization")]
    for m in last_norms:
        m.weight *= 0.2
        m.bias *= 0.2
    if last_norms:
        getattr(model, "detr", model).class_labels_classifier.weight *= 3.0
    if hasattr(model, "mask_head"):
        # as in test_checkpoint_faithfulness: each query's (peaky) attention map decides its mask,
        # the image features it shares with every other query are scaled down
        d, head = model.config.d_model, model.mask_head
        if HF_MAJOR >= 5:  # 5.x module names (see V5_RENAMES)
            lay1, query = head.conv1.conv, model.bbox_attention.q_proj
            adapters = [stage.fpn_adapter for stage in head.fpn_stages]
        else:
            lay1, query = head.lay1, model.bbox_attention.q_linear
            adapters = [head.adapter1, head.adapter2, head.adapter3]
        lay1.weight[:, :d] *= 1e-3
        lay1.weight[:, d:] *= 300.0
        for adapter in adapters:
            adapter.weight *= 1e-3
        query.weight *= 10.0
    return model.eval()


def hf_model(cls=DetrForSegmentation, seed=0, **overrides):
    config = DetrConfig(**{**SMALL, "use_timm_backbone": True, "backbone": "resnet18", **overrides})
    return randomize_(cls(config), seed)


def detr_d2_model(converted, depth: int):
    lay = converted.layout
    cfg = tiny_detr_cfg(num_classes=converted.num_classes, mask_on=lay.masks)
    cfg.merge_from_list(converted.config_options())
    if depth >= 50:
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    """The COCO sample image, 108x192, RGB, ImageNet-normalised: (1, 3, 108, 192)."""
    img = Image.open(IMAGE).convert("RGB").resize((192, 108), Image.BILINEAR)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return ((x - mean[:, None, None]) / std[:, None, None])[None]


def compare_outputs(hf, model, image):
    """Max abs differences of logits / boxes / mask logits (HF vs detr_d2) on ``image``; also checks
    the outputs are informative (they differ between queries)."""
    with torch.no_grad():
        theirs = hf(
            pixel_values=image, pixel_mask=torch.ones(1, *image.shape[-2:], dtype=torch.long)
        )
        ours = model.forward_network(image, torch.zeros(1, *image.shape[-2:], dtype=torch.bool))
    pairs = {
        "logits": (ours["pred_logits"], theirs.logits),
        "boxes": (ours["pred_boxes"], theirs.pred_boxes),
    }
    if "pred_masks" in ours:
        pairs["masks"] = (ours["pred_masks"], theirs.pred_masks)
    for name, (a, b) in pairs.items():
        assert a.shape == b.shape, name
        assert b.std(dim=1).mean() > (1e-2 if name == "boxes" else 0.1), (
            f"{name}: queries all alike"
        )
    diffs = {name: (a - b).abs().max().item() for name, (a, b) in pairs.items()}
    # official-converter tolerances are logits 1e-2, boxes 1e-4, masks 5e-2; these paths are far
    # tighter
    assert diffs["logits"] < 1e-3 and diffs["boxes"] < 1e-4 and diffs.get("masks", 0.0) < 1e-2, (
        diffs
    )
    return diffs


class RecordingCheckpointer(DetectionCheckpointer):
    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


@pytest.fixture(scope="module")
def r18_segmentation(tmp_path_factory):
    """A timm-ResNet-18 DetrForSegmentation saved both ways: (model, safetensors folder, .bin
    folder). transformers 5 writes safetensors only: its .bin folder is what the hub's older
    checkpoints are, config.json + ``pytorch_model.bin`` holding the 4.x-named state dict."""
    model = hf_model()
    folder = tmp_path_factory.mktemp("hf_r18")
    model.save_pretrained(str(folder / "safetensors"))
    if HF_MAJOR >= 5:
        (folder / "bin").mkdir()
        model.config.to_json_file(str(folder / "bin" / "config.json"))
        torch.save(
            _rename(model.state_dict(), V4_RENAMES), str(folder / "bin" / "pytorch_model.bin")
        )
    else:
        model.save_pretrained(str(folder / "bin"), safe_serialization=False)
    return model, str(folder / "safetensors"), str(folder / "bin")


# ------------------------------------------------------------------------------------------
# numerics
def test_timm_r18_segmentation_via_tool_and_detectron2_checkpointer(
    r18_segmentation, image, tmp_path, capsys
):
    hf, safetensors_dir, bin_dir = r18_segmentation
    assert sorted(os.listdir(safetensors_dir)) == ["config.json", "model.safetensors"]
    assert sorted(os.listdir(bin_dir)) == ["config.json", "pytorch_model.bin"]
    output = str(tmp_path / "converted.pth")
    assert (
        load_script("convert_detr_checkpoint").main(
            ["--source", safetensors_dir, "--output", output]
        )
        == 0
    )
    printed = capsys.readouterr().out
    # transformers 5 keeps the 4.x key names in the files save_pretrained writes (its renames apply
    # to the modules); the 5.x names: test_both_key_namings_convert_to_the_same_weights
    assert "Hugging Face (transformers 4.x DetrForSegmentation, timm backbone)" in printed
    assert "MODEL.DETR.NUM_CLASSES 5 MODEL.DETR.CLASS_SLOTS contiguous" in printed

    converted = convert_detr_file(safetensors_dir)
    from_bin = convert_detr_file(bin_dir)
    assert list(from_bin.model) == list(converted.model)
    assert all(torch.equal(from_bin.model[k], converted.model[k]) for k in converted.model)

    model = detr_d2_model(converted, 18)
    checkpointer = RecordingCheckpointer(model)
    checkpointer.load(output)
    inc = checkpointer.incompatible
    assert inc.missing_keys == [] and inc.unexpected_keys == [] and inc.incorrect_shapes == []
    compare_outputs(hf, model, image)


@pytest.mark.parametrize("backbone", ["timm", "native"])
def test_r50_bottleneck_segmentation_matches(backbone, image, tmp_path):
    """ResNet-50 (stride on the 3x3 conv: MODEL.RESNETS.STRIDE_IN_1X1 False) with both backbone
    kinds."""
    overrides = dict(backbone="resnet50") if backbone == "timm" else NATIVE_R50
    hf = hf_model(seed=1, **overrides)
    hf.save_pretrained(str(tmp_path))
    converted = convert_detr_file(str(tmp_path))
    assert converted.layout.depth == 50 and not converted.stride_in_1x1
    assert ("native" in converted.source_format) == (backbone == "native")
    model = detr_d2_model(converted, 50)
    model.load_state_dict(converted.model, strict=True)
    compare_outputs(hf, model, image)


def test_detection_model_matches(image, tmp_path):
    hf = hf_model(DetrForObjectDetection, seed=2)
    hf.save_pretrained(str(tmp_path))
    converted = convert_detr_file(
        str(tmp_path / "model.safetensors")
    )  # one file; config.json beside it
    assert not converted.layout.masks and len(converted.model) == len(
        official_state_dict_spec(converted.layout)
    )
    model = detr_d2_model(converted, 18)
    model.load_state_dict(converted.model, strict=True)
    diffs = compare_outputs(hf, model, image)
    assert "masks" not in diffs


def test_both_key_namings_convert_to_the_same_weights(r18_segmentation):
    """The installed transformers' own names (4.x on the pinned stack, 5.x on the newest) and the
    other version's names (renamed as transformers' conversion mapping does) convert alike."""
    hf, _, _ = r18_segmentation
    own = hf.state_dict()
    if HF_MAJOR >= 5:
        v5 = own
        v4 = _rename(v5, V4_RENAMES)
    else:
        v4 = own
        v5 = _rename(v4, V5_RENAMES)
    assert (
        "detr.model.backbone.model.layer1.0.conv1.weight" in v5
        and "mask_head.fpn_stages.2.refine.norm.bias" in v5
        and "detr.model.encoder.layers.0.mlp.fc1.weight" in v5
    )
    assert (
        "detr.model.backbone.conv_encoder.model.layer1.0.conv1.weight" in v4
        and "mask_head.gn5.bias" in v4
        and "detr.model.encoder.layers.0.fc1.weight" in v4
        and "bbox_attention.q_linear.weight" in v4
    )
    official_v4, layout_v4, style_v4, _ = hf_detr_to_official(v4, hf.config.to_dict())
    official_v5, layout_v5, style_v5, _ = hf_detr_to_official(v5, hf.config.to_dict())
    assert not style_v4.v5 and style_v5.v5 and layout_v4 == layout_v5
    assert list(official_v4) == list(official_v5) and all(
        torch.equal(official_v4[k], official_v5[k]) for k in official_v4
    )


# ------------------------------------------------------------------------------------------
# full-size layouts
@pytest.mark.parametrize(
    "cls, overrides, num_tensors",
    [
        (DetrForSegmentation, {}, 562),
        (DetrForSegmentation, NATIVE_R50, 562),
        (DetrForObjectDetection, dict(num_labels=91), 530),
    ],
    ids=["hub_r50_panoptic_timm", "r50_panoptic_native", "hub_r50_detection"],
)
def test_full_size_r50_layouts_on_meta(cls, overrides, num_tensors):
    config = DetrConfig(
        **{
            "use_timm_backbone": True,
            "use_pretrained_backbone": False,
            "backbone": "resnet50",
            "num_labels": 250,
            **overrides,
        }
    )
    with torch.device("meta"):
        state_dict = cls(config).state_dict()
    assert len(state_dict) == num_tensors
    official, layout, _, _ = hf_detr_to_official(state_dict, config.to_dict(), source="hub")
    masks = cls is DetrForSegmentation
    hub = OfficialDETRLayout(masks, 50, 256, 8, 6, 6, 2048, False, 100, 250 if masks else 91)
    assert layout == hub
    assert {k: v.shape for k, v in official.items()} == official_state_dict_spec(
        hub
    )  # 490 / 458 tensors


# ------------------------------------------------------------------------------------------
# refusals
def test_bad_tensors_are_named_in_hf_names(r18_segmentation, tmp_path, capsys):
    hf, _, _ = r18_segmentation
    sd = dict(hf.state_dict())
    config = hf.config.to_dict()
    bad = dict(sd)
    key = "detr.model.decoder.layers.1.encoder_attn.k_proj.weight"
    bad[key] = torch.zeros(128, 129)
    with pytest.raises(ValueError) as e:
        hf_detr_to_official(bad, config, source="model.safetensors")
    msg = str(e.value)
    assert msg.startswith("model.safetensors: does not match the Hugging Face DETR layout")
    assert msg.endswith(f"1 mis-shaped tensor(s): {key}: got (128, 129), expected (128, 128)")
    missing = {
        k: v for k, v in sd.items() if k != "detr.model.encoder.layers.0.self_attn.v_proj.bias"
    }
    with pytest.raises(
        ValueError,
        match=r"1 missing key\(s\): detr\.model\.encoder\.layers\.0\.self_attn\.v_proj\.bias$",
    ):
        hf_detr_to_official(missing, config)
    with pytest.raises(ValueError, match="position_embedding_type 'learned'"):
        hf_detr_to_official(sd, {**config, "position_embedding_type": "learned"})
    with pytest.raises(ValueError, match="encoder_attention_heads 8 != decoder_attention_heads 4"):
        hf_detr_to_official(sd, {**config, "decoder_attention_heads": 4})
    with pytest.raises(
        ValueError, match="use_timm_backbone=False but the backbone tensors are named like a timm"
    ):
        hf_detr_to_official(sd, {**config, "use_timm_backbone": False})

    folder = tmp_path / "bad_hf"
    folder.mkdir()
    torch.save(bad, str(folder / "pytorch_model.bin"))
    (folder / "config.json").write_text(json.dumps(config))
    output = str(tmp_path / "out.pth")
    assert (
        load_script("convert_detr_checkpoint").main(["--source", str(folder), "--output", output])
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith(f"error: {folder / 'pytorch_model.bin'}: does not match")
        and key in err[0]
    )
    assert not os.path.exists(output)
    assert (
        load_script("convert_detr_checkpoint").main(
            ["--source", str(folder), "--output", str(folder / "pytorch_model.bin"), "--overwrite"]
        )
        == 1
    )
    assert "refusing to overwrite the source checkpoint" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ class
# names
def test_class_names_come_from_id2label_else_the_official_layout(tmp_path):
    named = hf_model(
        DetrForSegmentation,
        seed=3,
        id2label={0: "person", 1: "wall-other-merged", 2: "N/A", 3: "Excavator", 4: "LABEL_4"},
    )
    named.save_pretrained(str(tmp_path / "named"))
    converted = convert_detr_file(str(tmp_path / "named"))
    assert converted.source_classes == ["person", "wall-other-merged", None, "Excavator", None]
    assert converted.class_slots == "contiguous"
    moved = retarget_classes(converted, ["wall", "excavator", "crane"], seed=4)
    assert [m.source_row for m in moved.matches] == [1, 3, None]
    w = converted.model["class_embed.weight"]
    assert torch.equal(moved.model["class_embed.weight"][0], w[1]) and torch.equal(
        moved.model["class_embed.weight"][3], w[5]
    )
    assert moved.class_slots == "contiguous" and moved.num_classes == 3

    coco = DetrConfig(
        **{**SMALL, "num_labels": 250, "use_timm_backbone": True, "backbone": "resnet18"}
    )
    with torch.device("meta"):
        meta_sd = DetrForSegmentation(coco).state_dict()
    assert (
        coco.id2label[1] == "LABEL_1"
    )  # placeholders only: the official COCO panoptic layout names the rows
    zero = torch.zeros(())
    torch.save(
        {k: zero.expand(v.shape) for k, v in meta_sd.items()}, str(tmp_path / "pytorch_model.bin")
    )
    (tmp_path / "config.json").write_text(coco.to_json_string())
    converted = convert_detr_file(str(tmp_path / "pytorch_model.bin"))
    assert (
        converted.source_classes == coco_panoptic_class_names()
        and converted.class_slots == "dataset_id"
    )


# ------------------------------------------------------------------------------------------
# documentation
def test_tool_docstring_examples_work_as_written(tmp_path, monkeypatch, capsys):
    """Run every example command of tools/convert_detr_checkpoint.py's docstring on fake sources of
    the names it uses: the official R50 panoptic layout and a hub-sized HF folder (stride-0 zero
    tensors)."""
    tool = load_script("convert_detr_checkpoint")
    doc = tool.__doc__.replace("\\\n", " ")
    commands = [
        shlex.split(line.strip())
        for line in doc.splitlines()
        if line.strip().startswith("python tools/")
    ]
    assert len(commands) == 2
    monkeypatch.chdir(tmp_path)
    zero = torch.zeros(())
    official = {
        k: zero.expand(s)
        for k, s in official_state_dict_spec(
            OfficialDETRLayout(True, 50, 256, 8, 6, 6, 2048, False, 100, 250)
        ).items()
    }
    torch.save({"model": official}, "detr-r50-panoptic-00ce5173.pth")
    config = DetrConfig(
        use_timm_backbone=True, use_pretrained_backbone=False, backbone="resnet50", num_labels=250
    )
    with torch.device("meta"):
        hub = DetrForSegmentation(config).state_dict()
    os.mkdir("detr-resnet-50-panoptic")
    torch.save(
        {k: zero.expand(v.shape) for k, v in hub.items()},
        "detr-resnet-50-panoptic/pytorch_model.bin",
    )
    config.to_json_file("detr-resnet-50-panoptic/config.json")
    (tmp_path / "class_map.yaml").write_text("circle: sports ball\n")
    for argv in commands:
        assert argv[:2] == ["python", "tools/convert_detr_checkpoint.py"]
        assert tool.main(argv[2:]) == 0, capsys.readouterr().err
        output = argv[argv.index("--output") + 1]
        assert torch.load(output, weights_only=True)["model"]["class_embed.weight"].shape[0] in (
            251,
            7,
        )
    printed = capsys.readouterr().out
    assert "4 of 6 classes of detr_quickstart_train copied from the checkpoint, 2 new" in printed
