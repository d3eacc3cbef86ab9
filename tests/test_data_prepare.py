"""datasets/prepare_*.py scripts."""

import json
import os

from detectron2.data import DatasetCatalog

from detr_d2.data.datasets import quickstart, register_panoptic_dataset
from tests.utils.scripts import load_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "tests", "data", "coco_panoptic_sample")


def _script(name):
    return load_script(name, "datasets")


def test_coco_panoptic_subset_is_registrable(tmp_path, capsys):
    tool = _script("prepare_coco_panoptic_subset")
    out_json, out_root = tmp_path / "sub.json", tmp_path / "png"
    rc = tool.main(
        [
            "--panoptic-json",
            os.path.join(SAMPLE, "panoptic_examples.json"),
            "--panoptic-root",
            os.path.join(SAMPLE, "panoptic_examples"),
            "--output-json",
            str(out_json),
            "--output-root",
            str(out_root),
            "-n",
            "1",
        ]
    )
    assert rc == 0 and "wrote 1 images" in capsys.readouterr().out
    data = json.loads(out_json.read_text())
    assert [a["image_id"] for a in data["annotations"]] == [142238]
    assert [i["id"] for i in data["images"]] == [142238] and len(data["categories"]) == 133
    assert os.listdir(out_root) == ["000000142238.png"]
    register_panoptic_dataset(
        "subset_test_sample", os.path.join(SAMPLE, "input_images"), str(out_root), str(out_json)
    )
    assert len(DatasetCatalog.get("subset_test_sample")) == 1
    rc = tool.main(
        [
            "--panoptic-json",
            str(out_json),
            "--panoptic-root",
            str(out_root),
            "--output-json",
            str(out_json),
            "--output-root",
            str(tmp_path / "x"),
        ]
    )
    assert rc == 1 and "refusing to write" in capsys.readouterr().err


def test_prepare_quickstart_generates_the_registered_splits(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(quickstart, "QUICKSTART_SPLITS", {"qs_small_val": ("val", 3, 1)})
    assert _script("prepare_quickstart").main(["--root", str(tmp_path)]) == 0
    assert "qs_small_val: 3 images" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "val")) == ["000000.jpg", "000001.jpg", "000002.jpg"]
