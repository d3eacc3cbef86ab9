"""Weights that loaded silently wrong or ended in a traceback (issue 21, poor):

* ``--eval-only`` with a class head of another size evaluated a random head and reported a PQ
  table; now refused, naming the checkpoint's class count and the config's;
* ``tools/demo.py`` / ``tools/export_model.py`` with missing or damaged weights gave a traceback
  (``AssertionError: Checkpoint ... not found!``, ``RuntimeError: ... cannot be read``); now the
  one ``error:`` line the tools promise;
* a torchvision ResNet (or official / Hugging Face DETR) file as weights loaded nothing with only
  "not found" warnings; now the layout is named with the converter to run.
"""

import logging
import os

import cv2
import numpy as np
import pytest
import torch
import torchvision
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model

from detr_d2.checkpoint.foreign import foreign_layout
from detr_d2.checkpoint.load_checks import load_inference_weights
from detr_d2.engine import main
from tests.utils.configs import tiny_detr_cfg
from tests.utils.scripts import load_script


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoints of the tiny model with 6 and 9 classes, a damaged one, a torchvision ResNet,
    a config of the 6-class model (metadata only, no files) and an image."""
    root = tmp_path_factory.mktemp("weights")
    out = {}
    for n in (6, 9):
        torch.manual_seed(0)
        out[n] = str(root / f"tiny_{n}.pth")
        torch.save({"model": build_model(tiny_detr_cfg(num_classes=n)).state_dict()}, out[n])
    with open(out[6], "rb") as f:
        data = f.read()
    out["damaged"] = str(root / "damaged.pth")
    with open(out["damaged"], "wb") as f:
        f.write(data[: len(data) // 2])
    out["torchvision"] = str(root / "resnet18.pth")
    torch.save(torchvision.models.resnet18().state_dict(), out["torchvision"])
    cfg = tiny_detr_cfg(num_classes=6)
    cfg.DATASETS.TEST = ("detr_quickstart_val",)
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 96
    cfg.MODEL.WEIGHTS = ""
    cfg.OUTPUT_DIR = str(root / "run")
    out["yaml"] = str(root / "tiny.yaml")
    with open(out["yaml"], "w") as f:
        f.write(cfg.dump())
    out["image"] = str(root / "x.jpg")
    cv2.imwrite(out["image"], np.zeros((48, 64, 3), np.uint8))
    out["missing"] = str(root / "missing.pth")
    return out


def test_matching_weights_load_completely(files):
    model = build_model(tiny_detr_cfg(num_classes=6))
    load_inference_weights(model, files[6])
    saved = torch.load(files[6], weights_only=True)["model"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_class_head_of_another_size_is_refused_with_both_counts(files):
    with pytest.raises(ValueError) as e:
        load_inference_weights(build_model(tiny_detr_cfg(num_classes=6)), files[9])
    msg = str(e.value)
    assert files[9] in msg and "9 classes in the checkpoint" in msg
    assert "6 in the config (MODEL.DETR.NUM_CLASSES 6" in msg and "not in the file" not in msg


def test_eval_only_with_another_class_count_reports_no_pq(files, caplog):
    args = default_argument_parser().parse_args(
        ["--config-file", files["yaml"], "--eval-only", "MODEL.WEIGHTS", files[9]]
    )
    with (
        caplog.at_level(logging.INFO),
        pytest.raises(ValueError, match="9 classes in the checkpoint"),
    ):
        main(args)
    assert "PQ" not in caplog.text


def test_weights_missing_tensors_are_refused_for_inference(files, tmp_path):
    state = torch.load(files[6], weights_only=True)["model"]
    partial = {k: v for k, v in state.items() if not k.startswith("transformer.decoder.")}
    path = str(tmp_path / "partial.pth")
    torch.save({"model": partial}, path)
    with pytest.raises(ValueError, match=r"tensor\(s\) of the model are not in the file") as e:
        load_inference_weights(build_model(tiny_detr_cfg(num_classes=6)), path)
    assert "transformer.decoder." in str(e.value) and path in str(e.value)


def test_torchvision_resnet_as_weights_names_the_converter(files):
    with pytest.raises(ValueError) as e:
        load_inference_weights(build_model(tiny_detr_cfg(num_classes=6)), files["torchvision"])
    msg = str(e.value)
    assert "a torchvision ResNet state dict" in msg and "tools/convert_torchvision_to_d2.py" in msg


def test_foreign_layouts_are_recognised_and_our_own_is_not():
    assert foreign_layout(build_model(tiny_detr_cfg(num_classes=6)).state_dict()) is None
    official = ["backbone.0.body.conv1.weight", "transformer.encoder.layers.0.linear1.weight"]
    assert "official DETR" in foreign_layout(official)
    hf = ["model.backbone.conv_encoder.model.conv1.weight", "class_labels_classifier.weight"]
    assert "Hugging Face" in foreign_layout(hf)
    assert foreign_layout(["res2.0.conv1.weight"]) is None  # Detectron2 names (model zoo)
    # a DETR transformer behind another Detectron2 backbone is still ours
    ours = ["backbone.bottom_up.stem.conv1.weight", "transformer.encoder.layers.0.linear1.weight"]
    assert foreign_layout(ours) is None


def test_torchvision_resnet_as_training_weights_is_refused(files, tmp_path):
    """train_net with a torchvision file as MODEL.WEIGHTS trained from scratch after "not found"
    warnings; the checkpointer every load goes through now refuses it."""
    from detr_d2.checkpoint import AtomicDetectionCheckpointer

    model = build_model(tiny_detr_cfg(num_classes=6))
    checkpointer = AtomicDetectionCheckpointer(model, str(tmp_path))
    with pytest.raises(ValueError, match="convert_torchvision_to_d2.py") as e:
        checkpointer.resume_or_load(files["torchvision"], resume=False)
    assert files["torchvision"] in str(e.value)


def _error_lines(err):
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "which, message",
    [
        ("missing", "MODEL.WEIGHTS not found"),
        ("damaged", "cannot be read as a checkpoint"),
        (9, "9 classes in the checkpoint"),
        ("torchvision", "convert_torchvision_to_d2.py"),
    ],
)
def test_demo_with_bad_weights_prints_one_error_line(files, tmp_path, capsys, which, message):
    demo = load_script("demo")
    rc = demo.main(
        [
            "--config-file",
            files["yaml"],
            "--input",
            files["image"],
            "--output",
            str(tmp_path / "out"),
            "--opts",
            "MODEL.WEIGHTS",
            files[which],
        ]
    )
    line = _error_lines(capsys.readouterr().err)
    assert rc == 1 and message in line and files[which] in line


@pytest.mark.parametrize(
    "which, message",
    [("damaged", "cannot be read as a checkpoint"), (9, "9 classes in the checkpoint")],
)
def test_export_with_bad_weights_prints_one_error_line(files, tmp_path, capsys, which, message):
    export = load_script("export_model")
    rc = export.main(
        [
            "--config-file",
            files["yaml"],
            "--format",
            "torchscript",
            "--output",
            str(tmp_path / "export"),
            "--opts",
            "MODEL.WEIGHTS",
            files[which],
        ]
    )
    line = _error_lines(capsys.readouterr().err)
    assert rc == 1 and message in line and files[which] in line
    assert not os.path.exists(tmp_path / "export" / "model.ts")


def test_train_net_eval_only_with_unfit_weights_prints_one_error_line(files, capsys):
    train_net = load_script("train_net")
    for which, message in ((9, "9 classes in the checkpoint"), ("missing", "not found")):
        with pytest.raises(SystemExit) as e:
            train_net.cli(
                ["--config-file", files["yaml"], "--eval-only", "MODEL.WEIGHTS", files[which]]
            )
        err = capsys.readouterr().err
        assert e.value.code == 1 and "Traceback" not in err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0] and files[which] in lines[0]
