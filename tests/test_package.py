"""Package-level behaviour: config defaults, registrations, collect_env, import without Detectron2,
setup script's Python check."""

import os
import subprocess
import sys

import pytest

from tests.utils.paths import ROOT


def test_config_defaults_and_registries():
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.modeling import META_ARCH_REGISTRY

    import detr_d2
    from detr_d2.utils.config_file import merge_config_file

    cfg = get_cfg()
    detr_d2.add_detr_config(cfg)
    assert cfg.MODEL.DETR.NUM_OBJECT_QUERIES == 100 and cfg.MODEL.DETR.HIDDEN_DIM == 256
    assert cfg.TEST.OBJECT_MASK_THRESHOLD == 0.85 and cfg.MODEL.DETR.PRE_NORM is False
    assert cfg.SOLVER.BACKBONE_MULTIPLIER == 0.1 and cfg.TEST.PANOPTIC_EVALUATOR == "in_process"
    for name in (
        os.listdir(os.path.join(ROOT, "configs"))
        + [
            os.path.join("coco_panoptic", f)
            for f in os.listdir(os.path.join(ROOT, "configs", "coco_panoptic"))
        ]
        + [
            os.path.join("quickstart", f)
            for f in os.listdir(os.path.join(ROOT, "configs", "quickstart"))
        ]
    ):
        if name.endswith(".yaml"):
            c = get_cfg()
            detr_d2.add_detr_config(c)
            # every shipped YAML loads as data (no python tags, also in its _BASE_ chain)
            merge_config_file(c, os.path.join(ROOT, "configs", name))
            assert c.MODEL.META_ARCHITECTURE == "DetrPanoptic", name
    assert "DetrPanoptic" in META_ARCH_REGISTRY
    names = DatasetCatalog.list()
    for n in (
        "detr_quickstart_train",
        "detr_quickstart_val",
        "coco_2017_train_panoptic",
        "coco_2017_val_panoptic",
    ):
        assert n in names
    assert MetadataCatalog.get("detr_quickstart_val").evaluator_type == "coco_panoptic_seg"


def test_collect_env_runs():
    out = subprocess.run(
        [sys.executable, "-m", "detr_d2.collect_env"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "detectron2" in out.stdout and "META_ARCH DetrPanoptic registered  True" in out.stdout


def test_import_without_detectron2_says_what_is_missing(tmp_path):
    # a sitecustomize that hides detectron2 from this interpreter
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'detectron2' or name.startswith('detectron2.'):\n"
        "            raise ModuleNotFoundError(\"No module named 'detectron2'\")\n"
        "sys.meta_path.insert(0, _Hide())\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    out = subprocess.run(
        [sys.executable, "-c", "import detr_d2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode != 0
    assert "ImportError: detr_d2 requires Detectron2" in out.stderr
    assert "scripts/setup.sh" in out.stderr and "pip install" in out.stderr


def test_setup_script_refuses_a_non_310_python(tmp_path):
    env = dict(os.environ, PYTHON="/bin/false", VENV=str(tmp_path / "venv"))
    out = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "setup.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 1
    assert "needs Python 3.10" in out.stderr and "PYTHON=/path/to/python3.10" in out.stderr
    assert not (tmp_path / "venv").exists()


@pytest.mark.parametrize("stack, version", [("latest", "3.12")])
def test_setup_script_latest_refuses_another_python(tmp_path, stack, version):
    env = dict(os.environ, PYTHON="/bin/false", VENV=str(tmp_path / "venv"))
    out = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "setup.sh"), stack],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 1
    assert f"setup.sh {stack} needs Python {version}" in out.stderr
    assert f"PYTHON=/path/to/python{version}" in out.stderr
    assert not (tmp_path / "venv").exists()


def test_setup_script_refuses_an_unknown_stack(tmp_path):
    out = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "setup.sh"), "newest"],
        capture_output=True,
        text=True,
        env=dict(os.environ, VENV=str(tmp_path / "venv")),
        timeout=60,
    )
    assert out.returncode == 2 and "unknown stack 'newest'" in out.stderr
    assert not (tmp_path / "venv").exists()


def _this_stack():
    """(setup.sh argument, venv) of the venv running the tests when setup.sh made it, else None."""
    for stack, venv in (("pinned", ".venv"), ("latest", ".venv-latest")):
        path = os.path.join(ROOT, venv)
        if os.path.realpath(sys.prefix) == os.path.realpath(path):
            return stack, path
    return None


@pytest.mark.skipif(
    _this_stack() is None
    or not os.path.exists(os.path.join(_this_stack()[1], ".detr_d2_setup_stamp")),
    reason="the tests do not run in a venv made by setup.sh",
)
def test_setup_script_second_run_is_a_no_op():
    """Run in the stack's own venv: pinned (.venv) or newest (.venv-latest; same D2_SOURCE, which
    is part of the stamp: CI passes it to both make test-latest and this run)."""
    stack, _ = _this_stack()
    out = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "setup.sh"), stack],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "up to date" in out.stdout


@pytest.mark.skipif(
    _this_stack() is None
    or not os.path.exists(os.path.join(_this_stack()[1], ".detr_d2_setup_stamp")),
    reason="the tests do not run in a venv made by setup.sh",
)
def test_setup_script_byte_compiled_site_packages():
    """setup.sh installs with ``pip --no-compile`` and compiles site-packages itself: every module
    installed into the venv has its .pyc (where ``PYTHONDONTWRITEBYTECODE`` is set, as on CI,
    nothing else writes them)."""
    import importlib.util
    import sysconfig

    missing, total = [], 0
    for site_dir in {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}:
        for folder, _, files in os.walk(site_dir):
            for name in files:
                if name.endswith(".py"):
                    total += 1
                    source = os.path.join(folder, name)
                    if not os.path.exists(importlib.util.cache_from_source(source)):
                        missing.append(os.path.relpath(source, site_dir))
    assert total > 1000, f"only {total} modules under site-packages"
    assert not missing, f"{len(missing)} of {total} modules without .pyc, e.g. {missing[:5]}"
