"""Datasets registered from a YAML file (``DATASETS.REGISTER_FILES``) or ``tools/train_net.py
--register-dataset``: same checks as ``register_panoptic_dataset``, errors naming the file / entry /
field, all or nothing, idempotent, registered before the model (train_net's setup, the
predictor)."""

import json
import os
import uuid

import pytest
import yaml
from detectron2.data import DatasetCatalog, MetadataCatalog

from detr_d2.data.datasets.register_from_file import (
    COMMAND_LINE_DATASETS_FILE,
    read_dataset_file,
    register_dataset_file,
    register_datasets_from_config,
)
from tests.utils.configs import tiny_detr_cfg
from tests.utils.paths import COCO_SAMPLE
from tests.utils.scripts import load_script

SAMPLE_ENTRY = {
    "image_root": os.path.join(COCO_SAMPLE, "input_images"),
    "panoptic_root": os.path.join(COCO_SAMPLE, "panoptic_examples"),
    "panoptic_json": os.path.join(COCO_SAMPLE, "panoptic_examples.json"),
}


@pytest.fixture
def names():
    """Unique dataset names; whatever got registered under them is removed afterwards."""
    made = []

    def make(prefix="regfile"):
        made.append(f"_{prefix}_{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield make
    for name in made:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def _yaml(path, entries):
    path.write_text(yaml.safe_dump(entries, sort_keys=False))
    return str(path)


def test_file_registers_with_paths_relative_to_the_file(tmp_path, names, monkeypatch):
    # a dataset folder next to the YAML, referenced with relative paths
    data = tmp_path / "site"
    data.mkdir()
    os.symlink(SAMPLE_ENTRY["image_root"], data / "images")
    os.symlink(SAMPLE_ENTRY["panoptic_root"], data / "panoptic")
    os.symlink(SAMPLE_ENTRY["panoptic_json"], data / "panoptic.json")
    train, val = names(), names()
    path = _yaml(
        tmp_path / "datasets.yaml",
        [
            {"name": train, "image_root": "site/images", "panoptic_root": "site/panoptic",
             "panoptic_json": "site/panoptic.json", "json_file": "site/instances.json", "missing": "skip"},  # noqa: E501
            dict(SAMPLE_ENTRY, name=val),
        ],
    )  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths follow the file, not the working directory
    assert register_dataset_file(path) == [train, val]
    meta = MetadataCatalog.get(train)
    assert meta.image_root == str(data / "images") and meta.panoptic_json == str(
        data / "panoptic.json"
    )
    assert (
        meta.json_file == str(data / "instances.json")
        and meta.evaluator_type == "coco_panoptic_seg"
    )
    assert len(meta.stuff_classes) == 133 and meta.stuff_classes[0] == "person"
    dicts = DatasetCatalog.get(train)
    assert len(dicts) == 2 and dicts[0]["file_name"].startswith(str(data / "images"))
    assert MetadataCatalog.get(val).panoptic_root == SAMPLE_ENTRY["panoptic_root"]
    # registering the same file again is a no-op (a second setup() in one process) ...
    assert register_dataset_file(path) == [train, val]
    # ... but the same name with other files is an error naming the entry
    other = _yaml(tmp_path / "other.yaml", [dict(SAMPLE_ENTRY, name=train)])
    with pytest.raises(
        ValueError,
        match=rf"other.yaml: entry 0 \({train}\): dataset '{train}' is already registered with "
        r"other files",
    ):
        register_dataset_file(other)
    # a builtin name cannot be taken over either
    builtin = _yaml(tmp_path / "builtin.yaml", [dict(SAMPLE_ENTRY, name="coco_2017_val_panoptic")])
    with pytest.raises(ValueError, match="already registered with other files"):
        register_dataset_file(builtin)


@pytest.mark.parametrize(
    "content, message",
    [
        ("name: a\n", r"expected a non-empty YAML list of datasets"),
        ("[]\n", r"expected a non-empty YAML list"),
        ("- [1, 2]\n", r"entry 0: expected a mapping with fields \['name', 'image_root'"),
        ("- {name: a, image_root: i, panoptic_root: p}\n", r"entry 0 \(a\): missing field\(s\) \['panoptic_json'\]"),  # noqa: E501
        ("- {name: a, image_root: i, panoptic_root: p, panoptic_json: j, png_root: x}\n",
         r"entry 0 \(a\): unknown field\(s\) \['png_root'\]"),
        ("- {name: a, image_root: 3, panoptic_root: p, panoptic_json: j}\n",
         r"entry 0 \(a\): field 'image_root' must be a non-empty string, got 3"),
        ("- {name: a, image_root: i, panoptic_root: p, panoptic_json: j, missing: ignore}\n",
         r"entry 0 \(a\): field 'missing' must be 'error' or 'skip'"),
        ("- {name: a, image_root: i, panoptic_root: p, panoptic_json: j}\n- "
            "{name: a, image_root: i, "
         "panoptic_root: p, panoptic_json: j}\n", r"entry 1 \(a\): name 'a' is also used by .*entry 0 \(a\)"),  # noqa: E501
        ("- {name: a, image_root: i\n", r"cannot be parsed as YAML"),
    ],
)  # fmt: skip
def test_bad_files_name_the_file_entry_and_field(tmp_path, content, message):
    path = tmp_path / "datasets.yaml"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        read_dataset_file(str(path))
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="dataset file not found: .*nope.yaml"):
        read_dataset_file(str(tmp_path / "nope.yaml"))


def test_register_checks_are_register_panoptic_datasets_and_a_bad_entry_registers_nothing(
    tmp_path, names
):
    good, bad = names(), names()
    with open(SAMPLE_ENTRY["panoptic_json"]) as f:
        data = json.load(f)
    data["categories"][3].pop("isthing")
    (tmp_path / "bad.json").write_text(json.dumps(data))
    path = _yaml(
        tmp_path / "datasets.yaml",
        [dict(SAMPLE_ENTRY, name=good), dict(SAMPLE_ENTRY, name=bad, panoptic_json="bad.json")],
    )
    with pytest.raises(
        ValueError,
        match=rf"datasets.yaml: entry 1 \({bad}\): .*bad.json: categories\[3\]: missing field "
        r"'isthing'",
    ):
        register_dataset_file(path)
    assert good not in DatasetCatalog.list() and bad not in DatasetCatalog.list()  # all or nothing
    missing = _yaml(
        tmp_path / "missing.yaml", [dict(SAMPLE_ENTRY, name=good, panoptic_json="no.json")]
    )
    with pytest.raises(
        FileNotFoundError,
        match=rf"missing.yaml: entry 0 \({good}\): panoptic JSON not found: .*no.json",
    ):
        register_dataset_file(missing)


def test_config_key_and_command_line_flag_register_before_the_model(tmp_path, names):
    from detectron2.modeling import build_model

    from detr_d2.engine import setup

    from_file, from_flag = names(), names()
    path = _yaml(tmp_path / "datasets.yaml", [dict(SAMPLE_ENTRY, name=from_file)])
    cfg = tiny_detr_cfg(num_classes=0)  # 0: derived from the registered dataset's metadata
    cfg.DATASETS.REGISTER_FILES = (path,)
    cfg.DATASETS.TEST = (from_file,)
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    config = tmp_path / "cfg.yaml"
    config.write_text(cfg.dump())
    train_net = load_script("train_net")
    args = train_net.build_parser().parse_args(
        ["--config-file", str(config), "--register-dataset", from_flag, *[os.path.relpath(SAMPLE_ENTRY[k]) for k in  # noqa: E501
         ("image_root", "panoptic_root", "panoptic_json")], "DATASETS.TRAIN", f"('{from_flag}',)"]
    )  # fmt: skip
    cfg = setup(args)
    written = os.path.join(str(tmp_path / "out"), COMMAND_LINE_DATASETS_FILE)
    assert list(cfg.DATASETS.REGISTER_FILES) == [path, written]
    assert [e.name for e in read_dataset_file(written)] == [from_flag]
    assert (
        read_dataset_file(written)[0].panoptic_json == SAMPLE_ENTRY["panoptic_json"]
    )  # absolute paths
    assert MetadataCatalog.get(from_flag).panoptic_root == SAMPLE_ENTRY["panoptic_root"]
    model = build_model(cfg)
    assert model.class_embed.out_features == 134  # 133 COCO classes + no-object, from the metadata
    # the run's saved config registers both again (a fresh process: eval-only, demo)
    saved = yaml.safe_load(open(os.path.join(str(tmp_path / "out"), "config.yaml")))
    assert saved["DATASETS"]["REGISTER_FILES"] == [path, written]
    assert register_datasets_from_config(cfg) == [from_file, from_flag]

    cfg.defrost()
    cfg.DATASETS.REGISTER_FILES = path
    with pytest.raises(ValueError, match="DATASETS.REGISTER_FILES must be a list of YAML files"):
        register_datasets_from_config(cfg)
    cfg.DATASETS.REGISTER_FILES = (str(tmp_path / "gone.yaml"),)
    with pytest.raises(
        FileNotFoundError, match="DATASETS.REGISTER_FILES: dataset file not found: .*gone.yaml"
    ):
        register_datasets_from_config(cfg)
    with pytest.raises(SystemExit):  # argparse: the flag takes exactly 4 values
        train_net.build_parser().parse_args(
            ["--config-file", str(config), "--register-dataset", "a", "b"]
        )


def test_predictor_registers_the_datasets_of_its_config(tmp_path, names):
    from detr_d2.predictor import DetrPanopticPredictor

    name = names()
    cfg = tiny_detr_cfg(num_classes=0)
    cfg.DATASETS.REGISTER_FILES = (
        _yaml(tmp_path / "datasets.yaml", [dict(SAMPLE_ENTRY, name=name)]),
    )
    cfg.DATASETS.TEST = (name,)
    predictor = DetrPanopticPredictor(cfg)
    assert predictor.metadata.name == name and predictor.metadata.thing_classes[0] == "person"
    assert predictor.model.class_embed.out_features == 134
