"""Config files are data (issue 21 item 1): a YAML ``!!python/object/apply:os.system`` tag -- in the
--config-file itself or in a ``_BASE_`` of an innocent config -- is refused by train_net, demo and
export_model with an error naming the file that holds it, and its command never runs. Detectron2's
own ``merge_from_file`` (``allow_unsafe=True`` by default) would run it."""

import os

import pytest
from detectron2.config import get_cfg

from detr_d2.config import get_detr_cfg
from detr_d2.utils.config_file import UnsafeConfigError
from tests.utils.scripts import load_script


def _hostile_yaml(path, marker):
    path.write_text(f"SEED: !!python/object/apply:os.system [\"touch '{marker}'\"]\n")
    return str(path)


def _innocent_with_base(path, base):
    path.write_text(f"_BASE_: {os.path.basename(base)}\nOUTPUT_DIR: somewhere\n")
    return str(path)


@pytest.fixture
def files(tmp_path):
    """(marker, hostile yaml, innocent yaml whose _BASE_ is the hostile one)."""
    marker = tmp_path / "MARKER"
    bad = _hostile_yaml(tmp_path / "bad.yaml", marker)
    innocent = _innocent_with_base(tmp_path / "innocent.yaml", bad)
    return marker, bad, innocent


def test_detectron2_default_would_run_it(files):
    """What the project used before: the tag runs (this is the case the tools must refuse)."""
    marker, bad, _ = files
    get_cfg().merge_from_file(bad)
    assert os.path.exists(marker)


@pytest.mark.parametrize("which", ["config", "base"])
def test_get_detr_cfg_refuses_python_tags(which, files):
    marker, bad, innocent = files
    with pytest.raises(UnsafeConfigError) as e:
        get_detr_cfg(bad if which == "config" else innocent)
    assert bad in str(e.value) and "python/object/apply" in str(e.value)
    if which == "base":
        assert innocent in str(e.value) and "_BASE_" in str(e.value)
    assert not os.path.exists(marker)


def _last_line(err):
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("which", ["config", "base"])
def test_train_net_refuses(which, files, capsys):
    marker, bad, innocent = files
    with pytest.raises(SystemExit) as e:
        load_script("train_net").cli(["--config-file", bad if which == "config" else innocent])
    err = capsys.readouterr().err
    assert e.value.code == 1 and _last_line(err).startswith(f"error: {bad}, line 1")
    assert not os.path.exists(marker)


@pytest.mark.parametrize("which", ["config", "base"])
def test_demo_and_export_refuse(which, files, tmp_path, capsys):
    marker, bad, innocent = files
    config = bad if which == "config" else innocent
    out = str(tmp_path / "out")
    runs = {
        "demo": ["--config-file", config, "--input", str(tmp_path), "--output", out],
        "export_model": ["--config-file", config, "--format", "onnx", "--output", out],
    }
    for tool, argv in runs.items():
        assert load_script(tool).main(argv) == 1
        assert _last_line(capsys.readouterr().err).startswith(f"error: {bad}, line 1"), tool
    assert not os.path.exists(marker) and not os.path.exists(out)
