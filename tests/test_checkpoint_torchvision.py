"""torchvision ImageNet ResNet -> Detectron2 backbone init: names, refusals, and loading through
DetectionCheckpointer into DetrPanoptic's ``backbone.*`` (.pkl by suffix matching, .pth by exact
names)."""

import pickle

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from detr_d2.checkpoint import convert_torchvision_resnet
from detr_d2.checkpoint.resnet_keys import torchvision_resnet_key_to_d2
from tests.utils.configs import tiny_detr_cfg
from tests.utils.scripts import load_script


class RecordingCheckpointer(DetectionCheckpointer):
    """Keeps the incompatible-keys result that DetectionCheckpointer only logs."""

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_tool():
    return load_script("convert_torchvision_to_d2")


@pytest.fixture(scope="module")
def imagenet_r18():
    """A torchvision ResNet-18 'ImageNet checkpoint': random weights, non-trivial BN statistics."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(100)
    return net.eval()


def test_key_table():
    assert torchvision_resnet_key_to_d2("conv1.weight") == "stem.conv1.weight"
    assert torchvision_resnet_key_to_d2("bn1.running_mean") == "stem.conv1.norm.running_mean"
    assert torchvision_resnet_key_to_d2("layer1.0.conv3.weight") == "res2.0.conv3.weight"
    assert (
        torchvision_resnet_key_to_d2("layer3.22.bn2.running_var")
        == "res4.22.conv2.norm.running_var"
    )
    assert torchvision_resnet_key_to_d2("layer4.0.downsample.0.weight") == "res5.0.shortcut.weight"
    assert torchvision_resnet_key_to_d2("layer2.0.downsample.1.bias") == "res3.0.shortcut.norm.bias"
    with pytest.raises(KeyError, match="fc.weight"):
        torchvision_resnet_key_to_d2("fc.weight")


def test_refuses_incomplete_or_foreign_state_dicts(imagenet_r18):
    sd = imagenet_r18.state_dict()
    out = convert_torchvision_resnet(sd)
    assert (
        len(out) == 5 + 8 * 10 + 3 * 5 and "res5.1.conv2.norm.running_var" in out
    )  # fc, num_batches_tracked dropped
    broken = {k: v for k, v in sd.items() if k != "layer1.0.bn1.running_var"}
    with pytest.raises(
        ValueError,
        match=r"r18\.pth: does not match torchvision ResNet-18: 1 missing key\(s\): "
        r"layer1\.0\.bn1\.running_var",
    ):
        convert_torchvision_resnet(broken, source="r18.pth")
    with pytest.raises(ValueError, match=r"unexpected key\(s\): layer1\.0\.extra\.weight"):
        convert_torchvision_resnet({**sd, "layer1.0.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="detr.pth: not a torchvision ResNet state dict"):
        convert_torchvision_resnet(
            {"detr.backbone.0.body.conv1.weight": torch.zeros(64, 3, 7, 7)}, source="detr.pth"
        )


@pytest.mark.parametrize("ext", [".pkl", ".pth"])
def test_converted_weights_initialise_detr_backbone(tmp_path, imagenet_r18, ext, capsys):
    source, output = str(tmp_path / "resnet18-imagenet.pth"), str(tmp_path / f"r18{ext}")
    torch.save(imagenet_r18.state_dict(), source)
    assert load_tool().main(["--source", source, "--output", output]) == 0
    assert "STRIDE_IN_1X1 False" in capsys.readouterr().out
    if ext == ".pkl":
        with open(output, "rb") as f:
            data = pickle.load(f)
        assert data["__author__"] == "torchvision" and data["matching_heuristics"] is True
        assert "stem.conv1.weight" in data["model"]  # prefix-free, matched by suffix

    model = build_model(tiny_detr_cfg()).eval()  # ResNet-18 backbone at model.backbone
    checkpointer = RecordingCheckpointer(model)
    checkpointer.load(output)
    inc = checkpointer.incompatible
    assert not [k for k in inc.missing_keys if k.startswith("backbone.")]
    assert not inc.unexpected_keys and not inc.incorrect_shapes
    assert any(
        k.startswith("transformer.") for k in inc.missing_keys
    )  # only the backbone is initialised

    tv = imagenet_r18
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = model.backbone(x)
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        for name, layer in [
            ("res2", tv.layer1),
            ("res3", tv.layer2),
            ("res4", tv.layer3),
            ("res5", tv.layer4),
        ]:
            y = layer(y)
            assert torch.allclose(feats[name], y, rtol=1e-4, atol=1e-4), name
