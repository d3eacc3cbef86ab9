"""The converter's own official-DETR key layout (issue 11) and its errors for bad checkpoints
(issue 13).

The layout spec in ``detr_d2.checkpoint.official_layout`` is written from the published DETR code
(facebookresearch/detr at 29901c5); the test oracle (``tests.utils.official_detr``, an independent
re-implementation of the official model) must produce exactly the same keys, shapes and key order
for every configuration. A checkpoint with one wrongly shaped tensor must be refused with a message
that names that tensor only (with found and expected shape) and the file, from the Python API and
from the tools (one ``error:`` line, exit 1, nothing written).
"""

import dataclasses
import os
import re

import pytest
import torch

from detr_d2.checkpoint import convert_official_detr, convert_torchvision_resnet
from detr_d2.checkpoint.official_layout import (
    OfficialDETRLayout,
    infer_official_layout,
    official_state_dict_spec,
)
from detr_d2.checkpoint.resnet_keys import torchvision_resnet_template
from tests.utils.official_detr import official_state_dict_template
from tests.utils.scripts import load_script

HUB = dict(
    masks=True,
    depth=50,
    hidden_dim=256,
    nheads=8,
    enc_layers=6,
    dec_layers=6,
    dim_feedforward=2048,
    pre_norm=False,
    num_queries=100,
    num_classes=250,
)
CONFIGS = {
    "r50_panoptic_hub": {},
    "r101_panoptic_hub": dict(depth=101),
    "r18_panoptic_small": dict(
        depth=18,
        hidden_dim=128,
        enc_layers=2,
        dec_layers=3,
        dim_feedforward=64,
        num_queries=7,
        num_classes=5,
    ),
    "r34_panoptic_prenorm_16_heads": dict(
        depth=34, pre_norm=True, nheads=16, enc_layers=1, dec_layers=4
    ),
    "r50_detection_hub": dict(masks=False, num_classes=91),
    "r152_detection_prenorm_no_encoder": dict(
        masks=False,
        depth=152,
        pre_norm=True,
        enc_layers=0,
        dec_layers=1,
        num_queries=300,
        num_classes=20,
    ),
    "r101_detection_384": dict(
        masks=False, depth=101, hidden_dim=384, dim_feedforward=1024, num_queries=50
    ),
}


def layout(**overrides) -> OfficialDETRLayout:
    return OfficialDETRLayout(**{**HUB, **overrides})


def meta_state_dict(lay: OfficialDETRLayout):
    return {k: torch.empty(s, device="meta") for k, s in official_state_dict_spec(lay).items()}


def corrupted_shape(shape):
    """The same tensor with its last dimension one larger."""
    return tuple(shape[:-1]) + (shape[-1] + 1,)


def keys_named(message: str, keys) -> set:
    return set(re.findall(r"[\w.]+", message)) & set(keys)


# ------------------------------------------------------------------------------------------ issue
# 11
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_spec_equals_oracle_template_and_inference_round_trips(name):
    lay = layout(**CONFIGS[name])
    if not lay.masks:
        lay = dataclasses.replace(lay, nheads=8)  # invisible in detection checkpoints
    oracle = official_state_dict_template(**dataclasses.asdict(lay))
    spec = official_state_dict_spec(lay)
    assert list(spec.items()) == list(oracle.items())  # same keys, shapes and order
    assert infer_official_layout(oracle) == lay


def test_hub_layouts_have_the_published_tensor_counts():
    assert len(official_state_dict_spec(layout())) == 490
    assert len(official_state_dict_spec(layout(depth=101))) == 745
    assert sum(s.numel() for s in official_state_dict_spec(layout()).values()) == 43_005_528
    assert (
        sum(s.numel() for s in official_state_dict_spec(layout(depth=101)).values()) == 62_049_880
    )


# ------------------------------------------------------------------------------------------ issue
# 13
@pytest.mark.parametrize(
    "lay",
    [layout(), layout(**CONFIGS["r18_panoptic_small"]), layout(masks=False, depth=18)],
    ids=["r50_panoptic", "r18_small", "r18_detection"],
)
def test_every_single_corrupt_tensor_is_named_alone(lay):
    """For each tensor in turn: corrupt only it. Inference must not follow the bad tensor, so the
    error lists exactly that tensor as mis-shaped. The one exception: the class count is shown by
    two tensors only (class_embed weight rows, bias length), so a bad bias is a tie, refused by
    naming both."""
    good = meta_state_dict(lay)
    p = lay.prefix
    for key, tensor in good.items():
        bad = dict(good)
        bad[key] = torch.empty(corrupted_shape(tensor.shape), device="meta")
        with pytest.raises(ValueError) as e:
            convert_official_detr(bad, source="ckpt.pth")
        msg = str(e.value)
        assert msg.startswith("ckpt.pth: "), msg
        if key == f"{p}class_embed.bias":
            assert "cannot infer the number of class logits - 1" in msg
            assert keys_named(msg, good) == {f"{p}class_embed.weight", f"{p}class_embed.bias"}, msg
            continue
        assert keys_named(msg, good) == {key}, (key, msg)
        found, expected = corrupted_shape(tensor.shape), tuple(tensor.shape)
        assert f"1 mis-shaped tensor(s): {key}: got {found}, expected {expected}" in msg, msg
        assert "missing" not in msg and "unexpected" not in msg


def test_bad_hidden_size_tensor_no_longer_breaks_inference():
    """Before issue 13, a class_embed of width 255 made the converter infer hidden size 255 and
    crash in nn.MultiheadAttention (255 is not divisible by 8 heads) or list every correct tensor as
    wrong."""
    sd = meta_state_dict(layout())
    sd["detr.class_embed.weight"] = torch.empty(251, 255, device="meta")
    with pytest.raises(
        ValueError,
        match=r"^r50\.pth: does not match .*hidden 256.*1 mis-shaped tensor\(s\): "
        r"detr\.class_embed\.weight: got \(251, 255\), expected \(251, 256\)$",
    ):
        convert_official_detr(sd, source="r50.pth")


def test_no_majority_is_refused_naming_the_disagreeing_tensors():
    lay = layout(
        masks=False, depth=18, enc_layers=1, dec_layers=0
    )  # FFN width shown by 3 tensors only
    sd = meta_state_dict(lay)
    sd["transformer.encoder.layers.0.linear1.weight"] = torch.empty(512, 256, device="meta")
    sd["transformer.encoder.layers.0.linear1.bias"] = torch.empty(1024, device="meta")
    with pytest.raises(ValueError) as e:
        infer_official_layout(sd, "x.pth")
    assert str(e.value) == (
        "x.pth: cannot infer the FFN width: the tensors that show it disagree (512 from "
        "transformer.encoder.layers.0.linear1.weight; 1024 from "
        "transformer.encoder.layers.0.linear1.bias; "
        "2048 from transformer.encoder.layers.0.linear2.weight)"
    )


def test_torchvision_converter_names_the_corrupt_tensor_alone():
    template = torchvision_resnet_template(50)
    for key in [
        "conv1.weight",
        "layer3.4.bn2.running_var",
        "layer4.0.downsample.0.weight",
        "layer2.3.conv3.weight",
    ]:
        sd = {k: torch.empty(s, device="meta") for k, s in template.items()}
        sd[key] = torch.empty(corrupted_shape(template[key]), device="meta")
        with pytest.raises(ValueError) as e:
            convert_torchvision_resnet(sd, source="r50.pth")
        msg = str(e.value)
        assert msg.startswith(
            "r50.pth: does not match torchvision ResNet-50: 1 mis-shaped tensor(s): "
        )
        assert keys_named(msg, template) == {key}, msg


def _save_expanded(state_dict, path, wrap):
    """A full-size checkpoint that takes a few kB: every tensor is a stride-0 view of one zero."""
    zero = torch.zeros(())
    sd = {k: zero.expand(tuple(v.shape)) for k, v in state_dict.items()}
    torch.save({"model": sd} if wrap else sd, path)


@pytest.mark.parametrize("tool_name", ["convert_detr_checkpoint", "convert_torchvision_to_d2"])
def test_tools_print_one_error_line_and_write_nothing(tmp_path, capsys, tool_name):
    if tool_name == "convert_detr_checkpoint":
        shapes, key, wrap = (
            official_state_dict_spec(layout()),
            "detr.transformer.decoder.layers.3.linear1.weight",
            True,
        )
    else:
        shapes, key, wrap = torchvision_resnet_template(101), "layer3.17.conv2.weight", False
    shapes = dict(shapes)
    expected = tuple(shapes[key])
    shapes[key] = torch.Size(corrupted_shape(shapes[key]))
    source, output = str(tmp_path / "full_size.pth"), str(tmp_path / "out.pth")
    _save_expanded({k: torch.empty(s, device="meta") for k, s in shapes.items()}, source, wrap)
    assert os.path.getsize(source) < 500_000

    assert load_script(tool_name).main(["--source", source, "--output", output]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {source}: does not match"), captured.err
    assert (
        f"1 mis-shaped tensor(s): {key}: got {tuple(shapes[key])}, expected {expected}" in lines[0]
    )
    assert keys_named(lines[0], shapes) == {key}
    assert sorted(os.listdir(tmp_path)) == ["full_size.pth"]  # no output, no temporary file
