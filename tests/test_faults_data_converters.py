"""The converters on hostile input (issue 21 item 3): repeated image ids (today
``convert_detection_to_panoptic`` drew both images' annotations onto one), polygon coordinates and
image sizes that crash or hang pycocotools (1e30, 1e9, -1e9: segfault / endless loop, leaving
temporary files), RLE counts that overrun the mask, PNG names leaving their root and segment ids
missing from a PNG. Each is one ``error:`` line naming the file, the entry and the id; nothing is
left behind."""

import copy
import json
import os
import subprocess
import sys

import pytest

from detr_d2.annotation import convert_detection_to_panoptic, convert_panoptic_to_detection
from detr_d2.data.coco_bounds import MAX_PIXELS, check_image_size, check_segmentation
from tests.utils.paths import (
    COCO_SAMPLE,
    COCO_SAMPLE_CATEGORIES_JSON,
    COCO_SAMPLE_DETECTION_JSON,
    ROOT,
)
from tests.utils.scripts import detection_to_panoptic_argv, load_script

DET_JSON, CATS_JSON = COCO_SAMPLE_DETECTION_JSON, COCO_SAMPLE_CATEGORIES_JSON
PAN_JSON = os.path.join(COCO_SAMPLE, "panoptic_examples.json")
PAN_ROOT = os.path.join(COCO_SAMPLE, "panoptic_examples")


@pytest.fixture
def det():
    with open(DET_JSON) as f:
        return json.load(f)


@pytest.fixture
def pan():
    with open(PAN_JSON) as f:
        return json.load(f)


def _det_tool(tmp_path, data, capsys):
    """Run tools/convert_detection_to_panoptic.py in process: (exit code, stderr)."""
    path = tmp_path / "in" / "det.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data))
    out = tmp_path / "out"
    argv = detection_to_panoptic_argv(out / "p.json", out / "png", path)
    rc = load_script("convert_detection_to_panoptic").main(argv)
    return rc, capsys.readouterr().err


def _polygon_annotation(det):
    """The first annotation, its mask replaced by a polygon (the sample's masks are RLE)."""
    ann = det["annotations"][0]
    ann["segmentation"] = [[10.0, 10.0, 50.0, 10.0, 50.0, 50.0, 10.0, 50.0]]
    return ann


def _error_line(err):
    """The one ``error:`` line of a tool's stderr (progress bars aside), no traceback."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _assert_nothing_written(tmp_path):
    out = tmp_path / "out"
    assert not out.exists() or os.listdir(out) == [], os.listdir(out)


def test_duplicate_image_ids_are_refused_naming_the_id(tmp_path, det, capsys):
    det["images"][1]["id"] = det["images"][0]["id"]
    rc, err = _det_tool(tmp_path, det, capsys)
    image_id = det["images"][0]["id"]
    assert rc == 1
    err = _error_line(err)
    assert "det.json: images[1]: id" in err and str(image_id) in err and "images[0]" in err
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    "coordinate, axis", [(1e30, "x"), (1e9, "x"), (-1e9, "x"), (float("nan"), "x")]
)
def test_polygon_coordinates_are_bounded_before_pycocotools(
    tmp_path, det, capsys, coordinate, axis
):
    """1e9 segfaults pycocotools' frPyObjects and -1e9 keeps it busy for minutes."""
    ann = _polygon_annotation(det)
    ann["segmentation"][0][2] = coordinate
    rc, err = _det_tool(tmp_path, det, capsys)
    assert rc == 1
    err = _error_line(err)
    assert f"annotation id {ann['id']} (image_id {ann['image_id']})" in err
    assert f"({axis} = {coordinate!r})" in err and "det.json" in err
    _assert_nothing_written(tmp_path)


def test_polygon_1e30_in_a_separate_process_ends_with_the_error_line(tmp_path, det):
    """The crash case end to end: the tool process must not die by a signal (rc -11 before)."""
    ann = _polygon_annotation(det)
    ann["segmentation"][0][3] = 1e30
    path = tmp_path / "det.json"
    path.write_text(json.dumps(det))
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "convert_detection_to_panoptic.py"),
            *detection_to_panoptic_argv(str(out / "p.json"), str(out / "png"), str(path)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "y = 1e+30" in proc.stderr
    assert not out.exists() or os.listdir(out) == []


@pytest.mark.parametrize(
    "height, width, message",
    [
        (10**6, 10**6, "1000000000000 pixels"),
        (1e30, 640, "'height' must be a positive integer"),
        (0, 640, "'height' must be a positive integer"),
        (480, "640", "'width' must be a positive integer"),
    ],
)
def test_image_sizes_are_bounded(tmp_path, det, capsys, height, width, message):
    det["images"][0].update(height=height, width=width)
    rc, err = _det_tool(tmp_path, det, capsys)
    err = _error_line(err)
    assert rc == 1 and message in err and "images[0]" in err and "det.json" in err
    _assert_nothing_written(tmp_path)


def test_rle_counts_must_cover_the_image_exactly(tmp_path, det, capsys):
    """Counts adding up to more than height*width make pycocotools' decode write past its
    buffer."""
    ann = next(a for a in det["annotations"] if isinstance(a["segmentation"], dict))
    h, w = ann["segmentation"]["size"]
    ann["segmentation"] = {"size": [h, w], "counts": [0, h * w * 100]}
    rc, err = _det_tool(tmp_path, det, capsys)
    err = _error_line(err)
    assert rc == 1 and f"cover {h * w * 100} pixels" in err and f"= {h * w}" in err
    _assert_nothing_written(tmp_path)


def test_compressed_rle_is_checked_too():
    import numpy as np
    import pycocotools.mask as mask_util

    mask = np.zeros((5, 4), np.uint8, order="F")
    mask[1:3, 1:3] = 1
    good = mask_util.encode(mask)
    check_segmentation({"size": [5, 4], "counts": good["counts"].decode()}, 5, 4, "w")
    bigger = mask_util.encode(np.zeros((50, 40), np.uint8, order="F"))["counts"].decode()
    with pytest.raises(ValueError, match="cover 2000 pixels"):
        check_segmentation({"size": [5, 4], "counts": bigger}, 5, 4, "w")
    with pytest.raises(ValueError, match="truncated or malformed"):
        check_segmentation({"size": [5, 4], "counts": good["counts"].decode() + "h"}, 5, 4, "w")
    assert check_image_size(480, 640, "w") == (480, 640)
    with pytest.raises(ValueError):
        check_image_size(1, MAX_PIXELS + 1, "w")


def _pan_convert(tmp_path, data):
    path = tmp_path / "pan.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "out" / "det.json"
    return convert_panoptic_to_detection(str(path), PAN_ROOT, str(out)), out


@pytest.mark.parametrize("fault", ["image_id", "images_id", "png_escape", "segment_id"])
def test_panoptic_to_detection_integrity(tmp_path, pan, fault):
    data = copy.deepcopy(pan)
    anns = data["annotations"]
    if fault == "image_id":
        anns[1]["image_id"] = anns[0]["image_id"]
        expected = f"annotations[1]: image_id {anns[0]['image_id']} repeats"
    elif fault == "images_id":
        data["images"][1]["id"] = data["images"][0]["id"]
        expected = f"images[1]: id {data['images'][0]['id']} repeats"
    elif fault == "png_escape":
        anns[0]["file_name"] = "../panoptic_examples/" + anns[0]["file_name"]
        expected = "leaves its folder"
    else:
        anns[0]["segments_info"][1]["id"] = anns[0]["segments_info"][0]["id"]
        expected = "segments_info[1]: segment id"
    with pytest.raises(ValueError) as e:
        _pan_convert(tmp_path, data)
    assert expected in str(e.value) and "pan.json" in str(e.value)
    assert not os.path.exists(tmp_path / "out" / "det.json")


def test_panoptic_to_detection_tool_gives_one_error_line(tmp_path, pan, capsys):
    pan["annotations"][0]["file_name"] = "/etc/passwd"
    path = tmp_path / "pan.json"
    path.write_text(json.dumps(pan))
    tool = load_script("convert_panoptic_to_detection")
    rc = tool.main(
        [
            "--panoptic-json",
            str(path),
            "--panoptic-root",
            PAN_ROOT,
            "--output-json",
            str(tmp_path / "det.json"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "'/etc/passwd' leaves its folder" in _error_line(err)
    assert [f for f in os.listdir(tmp_path) if f != "pan.json"] == []


def test_the_sample_still_converts(tmp_path):
    report = convert_detection_to_panoptic(
        DET_JSON, CATS_JSON, str(tmp_path / "p.json"), str(tmp_path / "png")
    )
    assert report.images == 2 and report.segments == 50


@pytest.mark.parametrize("name", ["../panoptic_examples/000000142238.png", "/etc/passwd"])
def test_prepare_subset_refuses_names_leaving_the_png_folder(tmp_path, pan, capsys, name):
    """The subset tool copied ``panoptic_root/<file_name>`` to ``output_root/<file_name>``: a name
    with ``..`` read and wrote outside both folders."""
    pan["annotations"][0]["file_name"] = name
    path = tmp_path / "pan.json"
    path.write_text(json.dumps(pan))
    tool = load_script("prepare_coco_panoptic_subset", "datasets")
    argv = ["--panoptic-json", str(path), "--panoptic-root", PAN_ROOT]
    argv += ["--output-json", str(tmp_path / "out.json"), "--output-root", str(tmp_path / "out")]
    rc = tool.main(argv + ["--num-images", "2"])
    line = _error_line(capsys.readouterr().err)
    assert rc == 1 and f"{name!r} leaves its folder" in line and "pan.json" in line
    assert sorted(os.listdir(tmp_path)) == ["pan.json"]
