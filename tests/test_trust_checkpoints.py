"""Checkpoints are data (issue 21 item 1): a real checkpoint whose pickle also carries an
``os.system`` payload (it would create a marker file) is refused by every entry point that reads
checkpoints -- train_net's MODEL.WEIGHTS, --resume's last_checkpoint and the fallback scan, demo,
export_model, both conversion tools, a Hugging Face folder's pytorch_model.bin, FROZEN_WEIGHTS and
MASK_HEAD_WEIGHTS, a Detectron2 .pkl -- with an error naming the file and the opt-in, and the
marker never appears. What weight files hold (tensors, numpy arrays, DETR's pickled
argparse.Namespace) still loads, and with DETR_D2_TRUST_CHECKPOINTS=1 the trusted file loads."""

import argparse
import json
import os
import pickle

import cv2
import numpy as np
import pytest
import torch

from detr_d2.checkpoint import AtomicDetectionCheckpointer
from detr_d2.checkpoint.checkpoint_io import load_state_dict_file, load_torch_file
from detr_d2.checkpoint.safe_load import TRUST_ENV, UntrustedCheckpointError
from tests.utils.configs import tiny_detr_cfg
from tests.utils.scripts import load_script
from tests.utils.tiny_training import make_tiny_data, tiny_train_cfg, write_cfg


class _Payload:
    """Unpickling this runs ``os.system("touch <marker>")``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture(autouse=True)
def _untrusted(monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_data(str(tmp_path_factory.mktemp("tiny_quickstart")))


@pytest.fixture(scope="module")
def tiny_state():
    from detectron2.modeling import build_model

    return build_model(tiny_detr_cfg(num_classes=6)).state_dict()


def _hostile(path, marker, model_state, **extra):
    """A real checkpoint ``{"model": model_state, ...}`` plus the payload, saved with torch.save."""
    torch.save({"model": model_state, **extra, "extra": _Payload(marker)}, str(path))
    return str(path)


def _assert_refused(text, path, marker):
    assert not os.path.exists(marker), "the payload ran"
    assert str(path) in text and TRUST_ENV in text and "posix.system" in text, text


def _last_line(err):
    return err.strip().splitlines()[-1]


def _tool(name, argv, capsys):
    rc = load_script(name).main(argv)
    return rc, capsys.readouterr().err


def _train_net(argv, capsys):
    with pytest.raises(SystemExit) as e:
        load_script("train_net").cli(argv)
    return e.value.code, capsys.readouterr().err


# ------------------------------------------------------------------------ train_net


@pytest.mark.parametrize("case", ["weights", "last_checkpoint", "fallback_scan"])
def test_train_net_refuses_hostile_checkpoints(case, tiny_data, tiny_state, tmp_path, capsys):
    marker, out = tmp_path / "MARKER", tmp_path / "out"
    cfg = tiny_train_cfg(out, max_iter=2)
    yaml = write_cfg(cfg, tmp_path / "cfg.yaml")
    argv = ["--config-file", yaml]
    if case == "weights":
        bad = _hostile(tmp_path / "weights.pth", marker, tiny_state)
        argv += ["MODEL.WEIGHTS", bad]
    else:  # a folder of an earlier run whose checkpoint was replaced
        out.mkdir()
        bad = _hostile(out / "model_0000003.pth", marker, tiny_state, iteration=3)
        if case == "last_checkpoint":
            (out / "last_checkpoint").write_text("model_0000003.pth")
        argv.insert(0, "--resume")
    code, err = _train_net(argv, capsys)
    assert code == 1 and _last_line(err).startswith("error: ")
    _assert_refused(err, bad, marker)


# ------------------------------------------------------------------------ tools


@pytest.fixture
def tiny_yaml(tmp_path):
    cfg = tiny_detr_cfg(num_classes=6)
    return write_cfg(cfg, tmp_path / "tiny.yaml")


def test_demo_refuses_hostile_weights(tiny_yaml, tiny_state, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    bad = _hostile(tmp_path / "weights.pth", marker, tiny_state)
    cv2.imwrite(str(tmp_path / "img.jpg"), np.full((32, 32, 3), 128, np.uint8))
    argv = ["--config-file", tiny_yaml, "--input", str(tmp_path / "img.jpg")]
    rc, err = _tool(
        "demo", argv + ["--output", str(tmp_path / "o"), "--opts", "MODEL.WEIGHTS", bad], capsys
    )
    assert rc == 1 and _last_line(err).startswith("error: ")
    _assert_refused(err, bad, marker)


def test_export_refuses_hostile_weights(tiny_yaml, tiny_state, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    bad = _hostile(tmp_path / "weights.pth", marker, tiny_state)
    argv = ["--config-file", tiny_yaml, "--format", "torchscript", "--output", str(tmp_path / "o")]
    rc, err = _tool("export_model", argv + ["--opts", "MODEL.WEIGHTS", bad], capsys)
    assert rc == 1 and _last_line(err).startswith("error: ")
    _assert_refused(err, bad, marker)
    assert not os.path.exists(tmp_path / "o" / "model.ts")


def _official_like(marker):
    """An official-DETR-shaped training checkpoint (backbone.0.body.* names, args Namespace)."""
    import torchvision

    body = torchvision.models.resnet18().state_dict()
    model = {f"backbone.0.body.{k}": v for k, v in body.items() if not k.startswith("fc.")}
    return {"model": model, "args": argparse.Namespace(lr=1e-4), "extra": _Payload(marker)}


def test_convert_detr_checkpoint_refuses_hostile_file(tmp_path, capsys):
    marker, bad = tmp_path / "MARKER", tmp_path / "detr.pth"
    torch.save(_official_like(marker), str(bad))
    argv = ["--source", str(bad), "--output", str(tmp_path / "out.pth")]
    rc, err = _tool("convert_detr_checkpoint", argv, capsys)
    assert rc == 1 and _last_line(err).startswith("error: ")
    _assert_refused(err, bad, marker)
    assert not os.path.exists(tmp_path / "out.pth")


def test_hf_folder_pytorch_model_bin_is_refused(tmp_path, capsys):
    marker, folder = tmp_path / "MARKER", tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "detr"}))
    bad = folder / "pytorch_model.bin"
    torch.save({"model.backbone.x": torch.zeros(1), "extra": _Payload(marker)}, str(bad))
    rc, err = _tool(
        "convert_detr_checkpoint",
        ["--source", str(folder), "--output", str(tmp_path / "o.pth")],
        capsys,
    )
    assert rc == 1 and _last_line(err).startswith("error: ")
    _assert_refused(err, bad, marker)


def test_convert_torchvision_refuses_hostile_file(tmp_path, capsys):
    import torchvision

    marker, bad = tmp_path / "MARKER", tmp_path / "r18.pth"
    state = torchvision.models.resnet18().state_dict()
    torch.save({**state, "extra": _Payload(marker)}, str(bad))
    argv = ["--source", str(bad), "--output", str(tmp_path / "r18.pkl")]
    rc, err = _tool("convert_torchvision_to_d2", argv, capsys)
    assert rc == 1 and _last_line(err).startswith("error: ")
    _assert_refused(err, bad, marker)


@pytest.mark.parametrize("key", ["FROZEN_WEIGHTS", "MASK_HEAD_WEIGHTS"])
def test_two_stage_weights_are_refused(key, tiny_state, tmp_path):
    from detectron2.modeling import build_model

    marker = tmp_path / "MARKER"
    bad = _hostile(tmp_path / "stage.pth", marker, tiny_state)
    cfg = tiny_detr_cfg(num_classes=6)
    setattr(cfg.MODEL.DETR, key, bad)
    if key == "FROZEN_WEIGHTS":
        cfg.MODEL.DETR.DEEP_SUPERVISION = False
    with pytest.raises(UntrustedCheckpointError) as e:
        build_model(cfg)
    _assert_refused(str(e.value), bad, marker)


def test_detectron2_pkl_with_payload_is_refused_and_model_zoo_pkl_loads(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    good, bad, marker = tmp_path / "zoo.pkl", tmp_path / "bad.pkl", tmp_path / "MARKER"
    weights = {"0.weight": np.full((2, 3), 7, np.float32), "0.bias": np.ones(2, np.float32)}
    with open(good, "wb") as f:  # Detectron2 model-zoo layout; protocol 2 as old zoo files
        pickle.dump({"model": weights, "__author__": "Detectron2 Model Zoo"}, f, protocol=2)
    AtomicDetectionCheckpointer(model).load(str(good))
    assert torch.all(model[0].weight == 7)
    assert torch.equal(load_state_dict_file(str(good))["0.bias"], torch.ones(2))
    with open(bad, "wb") as f:
        pickle.dump({"model": weights, "__author__": "x", "extra": _Payload(marker)}, f)
    for read in (lambda p: AtomicDetectionCheckpointer(model).load(p), load_state_dict_file):
        with pytest.raises(UntrustedCheckpointError) as e:
            read(str(bad))
        _assert_refused(str(e.value), bad, marker)


def test_official_detr_checkpoint_with_namespace_loads_through_the_checkpointer(tmp_path):
    """The official DETR files pickle ``args`` as an argparse.Namespace; they load, with no
    warning and no opt-in."""
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "detr.pth"
    state = {k: torch.full_like(v, 3.0) for k, v in model.state_dict().items()}
    args = argparse.Namespace(lr=1e-4, output_dir="out", lr_drop=200, frozen_weights=None)
    torch.save({"model": state, "optimizer": {"state": {}}, "epoch": 299, "args": args}, str(path))
    AtomicDetectionCheckpointer(model).load(str(path))
    assert torch.all(model.weight == 3.0)
    assert load_torch_file(str(path))["args"] == args


def test_opt_in_loads_the_trusted_file(tmp_path, monkeypatch, caplog):
    marker = tmp_path / "MARKER"
    path = _hostile(tmp_path / "trusted.pth", marker, {"w": torch.ones(2)})
    monkeypatch.setenv(TRUST_ENV, "1")
    loaded = load_torch_file(path)
    assert torch.equal(loaded["model"]["w"], torch.ones(2))
    assert os.path.exists(marker)  # trusted: loaded with full unpickling, as documented
    assert TRUST_ENV in caplog.text and path in caplog.text


# A Detectron2 model-zoo style .pkl written by numpy 1.26 with pickle protocol 2 (as old zoo files):
# {"model": {"w": float32 [[0, 1], [2, 3]]}, "__author__": "zoo"}; it names
# numpy.core.multiarray._reconstruct and _codecs.encode, which numpy 2 renamed / Python 3 needs.
_NUMPY1_ZOO_PKL = (
    "gAJ9cQAoWAUAAABtb2RlbHEBfXECWAEAAAB3cQNjbnVtcHkuY29yZS5tdWx0aWFycmF5Cl9yZWNvbnN0cnVjdApxBGNu"
    "dW1weQpuZGFycmF5CnEFSwCFcQZjX2NvZGVjcwplbmNvZGUKcQdYAQAAAGJxCFgGAAAAbGF0aW4xcQmGcQpScQuHcQxS"
    "cQ0oSwFLAksChnEOY251bXB5CmR0eXBlCnEPWAIAAABmNHEQiYiHcRFScRIoSwNYAQAAADxxE05OTkr/////Sv////9L"
    "AHRxFGKJaAdYEQAAAAAAAAAAAMKAPwAAAEAAAEBAcRVoCYZxFlJxF3RxGGJzWAoAAABfX2F1dGhvcl9fcRlYAwAAAHpv"
    "b3EadS4="
)


def test_numpy1_model_zoo_pickle_loads_on_this_numpy(tmp_path):
    import base64
    import warnings

    path = tmp_path / "zoo.pkl"
    path.write_bytes(base64.b64decode(_NUMPY1_ZOO_PKL))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = load_state_dict_file(str(path))
    assert torch.equal(state["w"], torch.arange(4, dtype=torch.float32).reshape(2, 2))
    assert not [w for w in caught if "numpy.core" in str(w.message)]


def test_opt_in_through_train_net(tiny_state, tmp_path, monkeypatch, capsys):
    """The same hostile MODEL.WEIGHTS, trusted explicitly: train_net --eval-only loads it."""
    marker = tmp_path / "MARKER"
    path = _hostile(tmp_path / "trusted.pth", marker, tiny_state)
    cfg = tiny_detr_cfg(num_classes=6)
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    yaml = write_cfg(cfg, tmp_path / "cfg.yaml")
    monkeypatch.setenv(TRUST_ENV, "1")
    load_script("train_net").cli(["--config-file", yaml, "--eval-only", "MODEL.WEIGHTS", path])
    assert os.path.exists(marker)
