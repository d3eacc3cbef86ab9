"""``DATASETS.REGISTER_FILES`` is honoured wherever the config builds something, each in a fresh
process (nothing registered by hand): the model's classes (``build_model``), ``DefaultPredictor``,
``build_detr_train_loader`` / ``build_detr_test_loader``, ``build_detr_evaluator`` and the one line
Detectron2's ``visualize_data`` needs; twice in a row (idempotent). Without it, building the model
is an error naming the fix (no all-things model with a warning) unless
``MODEL.DETR.ALL_THINGS_WITHOUT_METADATA`` asks for that."""

import json
import os
import subprocess
import sys
import uuid

import pytest
import yaml
from detectron2.modeling import build_model

from tests.utils.configs import tiny_detr_cfg
from tests.utils.paths import COCO_SAMPLE, ROOT


@pytest.fixture(scope="module")
def datasets_yaml(tmp_path_factory):
    name = f"regfiles_{uuid.uuid4().hex[:8]}"
    path = tmp_path_factory.mktemp("register_files") / "datasets.yaml"
    entry = {
        "name": name,
        "image_root": os.path.join(COCO_SAMPLE, "input_images"),
        "panoptic_root": os.path.join(COCO_SAMPLE, "panoptic_examples"),
        "panoptic_json": os.path.join(COCO_SAMPLE, "panoptic_examples.json"),
    }
    path.write_text(yaml.safe_dump([entry]))
    return str(path), name


def _probe(what, datasets_yaml, name):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.utils.register_files_probe", what, datasets_yaml, name],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("PROBE ")]
    return json.loads(line[len("PROBE ") :])


@pytest.mark.parametrize(
    "what", ["model", "predictor", "train_loader", "test_loader", "evaluator", "visualize_data"]
)
def test_register_files_honoured_in_a_fresh_process(what, datasets_yaml):
    path, name = datasets_yaml
    out = _probe(what, path, name)
    assert "error" not in out, out["error"]
    is_thing = out["metadata_is_thing"]  # registered from the file in that process
    assert len(is_thing) == 133 and sum(is_thing) == 80  # COCO: 80 things, 53 stuff
    if what in ("model", "predictor"):
        assert out["is_thing"] == is_thing  # the dataset's things and stuff, not all things
    if what == "predictor":
        assert out["outputs"] == ["panoptic_seg"]
    if what == "train_loader":
        assert len(out["instances"]) == 2 and all(n > 0 for n in out["instances"])
    if what == "test_loader":
        assert out["file_names"][0].endswith(".jpg")
    if what == "evaluator":
        assert out["evaluator"] == "FastCOCOPanopticEvaluator"
    if what == "visualize_data":
        assert out["dicts"] == 2


def test_without_registration_the_model_is_refused(datasets_yaml):
    _, name = datasets_yaml
    out = _probe("model", "-", name)  # NUM_CLASSES 0: derive from the (missing) metadata
    assert "error" in out, out
    assert "DATASETS.REGISTER_FILES" in out["error"]


def test_all_things_only_when_asked():
    cfg = tiny_detr_cfg(num_classes=7)
    cfg.DATASETS.TEST = ("nothing_registered_under_this_name",)
    cfg.MODEL.DETR.ALL_THINGS_WITHOUT_METADATA = False
    with pytest.raises(ValueError, match="no dataset in DATASETS.TRAIN/TEST .* is registered"):
        build_model(cfg)
    cfg.MODEL.DETR.ALL_THINGS_WITHOUT_METADATA = True
    assert build_model(cfg).is_thing.tolist() == [True] * 7
