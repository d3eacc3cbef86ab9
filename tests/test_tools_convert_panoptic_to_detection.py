"""tools/convert_panoptic_to_detection.py and detr_d2.annotation (``panoptic_to_detection``)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
from panopticapi.utils import rgb2id
from PIL import Image

from detr_d2.annotation import convert_detection_to_panoptic, convert_panoptic_to_detection
from tests.utils.scripts import load_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "tests", "data", "coco_panoptic_sample")
PAN_JSON = os.path.join(SAMPLE, "panoptic_examples.json")
PAN_ROOT = os.path.join(SAMPLE, "panoptic_examples")
TOOL = os.path.join(REPO, "tools", "convert_panoptic_to_detection.py")


def _load(path):
    with open(path) as f:
        return json.load(f)


def _compare_with_reference(out, things_only):
    """Our output vs the detection-format file shipped with the sample (panopticapi's output)."""
    ref = _load(os.path.join(SAMPLE, "panoptic_coco_detection_format.json"))
    cats = _load(os.path.join(SAMPLE, "panoptic_coco_categories.json"))
    isthing = {c["id"]: c["isthing"] for c in cats}
    ref_anns = [a for a in ref["annotations"] if isthing[a["category_id"]] or not things_only]
    assert len(out["annotations"]) == len(ref_anns)
    for ours, theirs in zip(out["annotations"], ref_anns):
        for key in ("image_id", "category_id", "iscrowd", "area", "bbox"):
            assert ours[key] == theirs[key], key
        assert np.array_equal(
            mask_util.decode(ours["segmentation"]), mask_util.decode(theirs["segmentation"])
        )
    assert [a["id"] for a in out["annotations"]] == list(range(1, len(ref_anns) + 1))


def test_things_only_match_the_reference_detection_file(tmp_path):
    report = convert_panoptic_to_detection(PAN_JSON, PAN_ROOT, str(tmp_path / "det.json"))
    out = _load(tmp_path / "det.json")
    _compare_with_reference(out, things_only=True)
    assert report.segments == 43 and report.dropped == []
    assert all(c["isthing"] for c in out["categories"]) and len(out["categories"]) == 80
    assert out["images"] == _load(PAN_JSON)["images"]


def test_include_stuff_and_round_trip_back_to_panoptic(tmp_path):
    convert_panoptic_to_detection(
        PAN_JSON, PAN_ROOT, str(tmp_path / "det.json"), include_stuff=True, workers=2
    )
    out = _load(tmp_path / "det.json")
    _compare_with_reference(out, things_only=False)
    assert len(out["categories"]) == 133
    cats = tmp_path / "cats.json"
    cats.write_text(json.dumps(out["categories"]))
    convert_detection_to_panoptic(
        str(tmp_path / "det.json"), str(cats), str(tmp_path / "pan.json"), str(tmp_path / "png")
    )
    gt, back = _load(PAN_JSON), _load(tmp_path / "pan.json")
    for g_ann, b_ann in zip(gt["annotations"], back["annotations"]):
        g = rgb2id(np.asarray(Image.open(os.path.join(PAN_ROOT, g_ann["file_name"]))))
        b = rgb2id(np.asarray(Image.open(tmp_path / "png" / b_ann["file_name"])))
        for gs, bs in zip(g_ann["segments_info"], b_ann["segments_info"]):
            assert (
                np.array_equal(g == gs["id"], b == bs["id"])
                and gs["category_id"] == bs["category_id"]
            )


def test_output_loads_with_detectron2_instances_loader(tmp_path):
    from detectron2.data.datasets import load_coco_json

    convert_panoptic_to_detection(PAN_JSON, PAN_ROOT, str(tmp_path / "det.json"))
    dicts = load_coco_json(
        str(tmp_path / "det.json"), os.path.join(SAMPLE, "input_images"), "p2d_sample_test"
    )
    assert len(dicts) == 2 and len(dicts[0]["annotations"]) == 15  # 14 people (1 crowd) + 1 thing
    assert sum(a["iscrowd"] for d in dicts for a in d["annotations"]) == 3


def test_cli(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            TOOL,
            "--panoptic-json",
            PAN_JSON,
            "--panoptic-root",
            PAN_ROOT,
            "--output-json",
            str(tmp_path / "det.json"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "2 images, 43 segments written" in res.stdout
    _compare_with_reference(_load(tmp_path / "det.json"), things_only=True)


def test_help_and_cli_error_exit(tmp_path, capsys):
    tool = load_script("convert_panoptic_to_detection")
    with pytest.raises(SystemExit) as e:
        tool.main(["--help"])
    assert e.value.code == 0 and "--include-stuff" in capsys.readouterr().out
    rc = tool.main(
        [
            "--panoptic-json",
            str(tmp_path / "nope.json"),
            "--panoptic-root",
            PAN_ROOT,
            "--output-json",
            str(tmp_path / "out.json"),
        ]
    )
    assert rc == 1 and "panoptic JSON not found" in capsys.readouterr().err


@pytest.fixture
def pan_copy(tmp_path):
    root = tmp_path / "pngs"
    shutil.copytree(PAN_ROOT, root)
    return _load(PAN_JSON), root, tmp_path / "pan.json"


def _convert(data, root, json_path, **kw):
    json_path.write_text(json.dumps(data))
    return convert_panoptic_to_detection(
        str(json_path), str(root), str(json_path.parent / "out.json"), **kw
    )


def test_png_id_not_in_segments_info_is_an_error(pan_copy):
    data, root, json_path = pan_copy
    removed = data["annotations"][0]["segments_info"].pop(2)
    with pytest.raises(ValueError) as e:
        _convert(data, root, json_path)
    assert "000000142238.png" in str(e.value) and str(removed["id"]) in str(e.value)
    assert not (json_path.parent / "out.json").exists()


def test_segment_missing_from_png_is_an_error(pan_copy):
    """A listed segment with no pixel means the JSON and the PNG do not belong together
    (issue 21): refused, naming the PNG, the image id and the segment id."""
    data, root, json_path = pan_copy
    data["annotations"][0]["segments_info"].append({"id": 99, "category_id": 1, "iscrowd": 0})
    with pytest.raises(ValueError) as e:
        _convert(data, root, json_path)
    msg = str(e.value)
    assert "000000142238.png" in msg and "image_id 142238" in msg and "[99]" in msg
    assert not (json_path.parent / "out.json").exists()


def test_grayscale_png_is_an_error(pan_copy):
    data, root, json_path = pan_copy
    png = root / "000000439180.png"
    Image.open(png).convert("L").save(png)
    with pytest.raises(ValueError, match="grayscale") as e:
        _convert(data, root, json_path)
    assert str(png) in str(e.value)


def test_rgba_png_converts_like_its_rgb(pan_copy):
    """The one panoptic PNG reader ignores alpha, as panopticapi's
    rgb2id(np.array(Image.open(png)))."""
    data, root, json_path = pan_copy
    _convert(data, root, json_path)
    expected = (json_path.parent / "out.json").read_text()
    os.remove(json_path.parent / "out.json")
    png = root / "000000439180.png"
    Image.open(png).convert("RGBA").save(png)
    _convert(data, root, json_path)
    assert (json_path.parent / "out.json").read_text() == expected


def test_missing_png_unknown_category_malformed_json_and_overwrite(pan_copy):
    data, root, json_path = pan_copy
    os.remove(root / "000000439180.png")
    with pytest.raises(
        FileNotFoundError, match=r"annotations\[1\]: panoptic PNG not found .*000000439180.png"
    ):
        _convert(data, root, json_path)
    shutil.copy(os.path.join(PAN_ROOT, "000000439180.png"), root)
    data["annotations"][1]["segments_info"][0]["category_id"] = 777
    with pytest.raises(
        ValueError, match=r"image_id 439180: segments_info\[0\] has category_id 777"
    ):
        _convert(data, root, json_path)
    json_path.write_text('{"images": [], "annotations": [}')
    with pytest.raises(ValueError, match=r"pan.json: malformed panoptic JSON"):
        convert_panoptic_to_detection(str(json_path), str(root), str(json_path.parent / "out.json"))
    with pytest.raises(ValueError, match="refusing to write"):
        convert_panoptic_to_detection(PAN_JSON, PAN_ROOT, PAN_JSON)
