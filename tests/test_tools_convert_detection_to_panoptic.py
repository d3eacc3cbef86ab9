"""tools/convert_detection_to_panoptic.py and detr_d2.annotation (``detection_to_panoptic``)."""

import json
import os
import subprocess
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
from panopticapi.utils import id2rgb, rgb2id
from PIL import Image

from detr_d2.annotation import convert_detection_to_panoptic
from detr_d2.annotation.detection_to_panoptic import detection_image_to_panoptic
from tests.utils.paths import COCO_SAMPLE as SAMPLE
from tests.utils.paths import COCO_SAMPLE_CATEGORIES_JSON, COCO_SAMPLE_DETECTION_JSON
from tests.utils.paths import ROOT as REPO
from tests.utils.scripts import detection_to_panoptic_argv, load_script

DET_JSON, CATS_JSON = COCO_SAMPLE_DETECTION_JSON, COCO_SAMPLE_CATEGORIES_JSON
TOOL = os.path.join(REPO, "tools", "convert_detection_to_panoptic.py")


def _ids(path):
    return rgb2id(np.asarray(Image.open(path).convert("RGB")))


def _assert_reproduces_ground_truth(out_json, out_root):
    with open(os.path.join(SAMPLE, "panoptic_examples.json")) as f:
        gt = json.load(f)
    with open(out_json) as f:
        out = json.load(f)
    assert [a["image_id"] for a in out["annotations"]] == [a["image_id"] for a in gt["annotations"]]
    same_colour = 0
    for g_ann, o_ann in zip(gt["annotations"], out["annotations"]):
        assert o_ann["file_name"] == g_ann["file_name"]
        g = _ids(os.path.join(SAMPLE, "panoptic_examples", g_ann["file_name"]))
        o = _ids(os.path.join(out_root, o_ann["file_name"]))
        assert np.array_equal(g == 0, o == 0)
        assert len(o_ann["segments_info"]) == len(g_ann["segments_info"])
        for gs, os_ in zip(g_ann["segments_info"], o_ann["segments_info"]):
            assert np.array_equal(g == gs["id"], o == os_["id"])  # same pixel set
            for key in ("category_id", "iscrowd", "area", "bbox"):
                assert gs[key] == os_[key], key
            same_colour += gs["id"] == os_["id"]
    # Stuff colours and the first thing of each category follow panopticapi's scheme exactly.
    assert same_colour == 12
    assert out["categories"][0]["name"] == "person" and len(out["categories"]) == 133


def test_reproduces_the_coco_sample_ground_truth_segment_for_segment(tmp_path):
    report = convert_detection_to_panoptic(
        DET_JSON, CATS_JSON, str(tmp_path / "p.json"), str(tmp_path / "png")
    )
    _assert_reproduces_ground_truth(str(tmp_path / "p.json"), str(tmp_path / "png"))
    assert (report.images, report.segments, report.overlap_pixels, report.dropped) == (2, 50, 0, [])
    assert not [f for f in os.listdir(tmp_path / "png") if f.endswith(".tmp")]


def test_cli_with_workers_matches_in_process_output(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            TOOL,
            *detection_to_panoptic_argv(str(tmp_path / "p.json"), str(tmp_path / "png")),
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "2 images, 50 segments written" in res.stdout
    _assert_reproduces_ground_truth(str(tmp_path / "p.json"), str(tmp_path / "png"))


def test_help_and_cli_error_exit(tmp_path, capsys):
    tool = load_script("convert_detection_to_panoptic")
    with pytest.raises(SystemExit) as e:
        tool.main(["--help"])
    assert e.value.code == 0 and "--overlap" in capsys.readouterr().out
    rc = tool.main(detection_to_panoptic_argv(DET_JSON, str(tmp_path)))
    assert rc == 1 and "refusing to write" in capsys.readouterr().err


# ---- synthetic cases: overlaps, merging, input formats -------------------------------------------

CATS = {
    1: {"id": 1, "name": "a", "isthing": 1, "color": [200, 0, 0]},
    2: {"id": 2, "name": "b", "isthing": 1, "color": [0, 200, 0]},
    10: {"id": 10, "name": "floor", "isthing": 0, "color": [0, 0, 200]},
    11: {"id": 11, "name": "wall", "isthing": 0, "color": [50, 50, 50]},
}
IMAGE = {"id": 7, "file_name": "x.jpg", "height": 20, "width": 30}


def _box_poly(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _rle(mask):
    return mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))


def test_overlaps_resolved_things_over_stuff_then_smaller_over_larger():
    big = np.zeros((20, 30), bool)
    big[2:14, 2:16] = True
    small = np.zeros((20, 30), bool)
    small[8:12, 10:20] = True
    anns = [
        {"id": 1, "category_id": 10, "segmentation": _rle(np.ones((20, 30), bool)), "iscrowd": 0},
        {"id": 2, "category_id": 1, "segmentation": _rle(big), "iscrowd": 0},
        {"id": 3, "category_id": 2, "segmentation": _rle(small), "iscrowd": 1},
        {"id": 4, "category_id": 11, "segmentation": _rle(small), "iscrowd": 0},  # under things
    ]
    ids, segs, report = detection_image_to_panoptic(IMAGE, anns, CATS)
    by_cat = {s["category_id"]: s for s in segs}
    assert set(by_cat) == {10, 1, 2}
    assert np.array_equal(ids == by_cat[2]["id"], small)  # smaller thing on top
    assert np.array_equal(ids == by_cat[1]["id"], big & ~small)
    assert np.array_equal(ids == by_cat[10]["id"], ~(big | small))
    assert by_cat[2]["iscrowd"] == 1 and by_cat[1]["area"] == (big & ~small).sum()
    assert by_cat[1]["bbox"] == [2, 2, 14, 12]
    assert report.overlap_pixels == (big | small).sum() and report.images_with_overlap == 1
    assert report.dropped == [(7, 4, 11, "fully covered")]
    assert by_cat[10]["id"] == 200 * 256 * 256 and by_cat[1]["id"] == 200  # category colours
    with pytest.raises(ValueError, match=r"image_id 7 \(x.jpg\): annotations overlap on"):
        detection_image_to_panoptic(IMAGE, anns, CATS, overlap="error")


def test_polygons_uncompressed_rle_stuff_merge_and_sequential_ids():
    left = np.zeros((20, 30), bool)
    left[:, :10] = True
    uncompressed = {"size": [20, 30], "counts": [0, 200, 400]}  # column-major: first 10 columns
    anns = [
        {"id": 1, "category_id": 1, "segmentation": _box_poly(12, 2, 18, 8)},
        {"id": 2, "category_id": 1, "segmentation": _box_poly(20, 2, 26, 8)},
        {"id": 3, "category_id": 10, "segmentation": uncompressed},
        {"id": 4, "category_id": 10, "segmentation": _box_poly(0, 12, 30, 20)},
    ]
    ids, segs, report = detection_image_to_panoptic(IMAGE, anns, CATS, id_scheme="sequential")
    assert [s["id"] for s in segs] == [1, 2, 3] and report.merged_stuff == 1
    assert [s["category_id"] for s in segs] == [1, 1, 10]
    stuff = ids == 3
    assert stuff[:, :10].all() and stuff[12:, :].all() and not stuff[:12, 10:].any()
    assert segs[0]["bbox"][2:] == [6, 6]  # polygon 12..18 covers pixels 12..17
    # colour ids: a second thing of the same category gets a jittered colour, not the base one
    _, segs, _ = detection_image_to_panoptic(IMAGE, anns, CATS)
    assert segs[0]["id"] == 200 and segs[1]["id"] != 200
    r, g, b = id2rgb(segs[1]["id"])
    assert abs(int(r) - 200) <= 30 and g <= 30 and b <= 30


@pytest.fixture
def det_copy(tmp_path):
    with open(DET_JSON) as f:
        return json.load(f)


def _run(tmp_path, det, cats_path=CATS_JSON, **kwargs):
    path = tmp_path / "det.json"
    path.write_text(json.dumps(det) if not isinstance(det, str) else det)
    return convert_detection_to_panoptic(
        str(path), cats_path, str(tmp_path / "out.json"), str(tmp_path / "png"), **kwargs
    )


def test_unknown_category_id_names_file_and_annotation(tmp_path, det_copy):
    det_copy["annotations"][5]["category_id"] = 12345
    with pytest.raises(ValueError) as e:
        _run(tmp_path, det_copy)
    msg = str(e.value)
    assert "det.json" in msg and "annotations[5] (id 5)" in msg and "category_id 12345" in msg
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["annotations"][0].update(image_id=1), "image_id 1 is not in 'images'"),
        (lambda d: d["annotations"][0].pop("segmentation"), "missing field(s) ['segmentation']"),
        (lambda d: d["images"][0].pop("height"), "images[0]: missing field(s) ['height']"),
        (
            lambda d: d["annotations"][0]["segmentation"].update(size=[10, 10]),
            "RLE 'size' [10, 10] differs",
        ),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4]]), ">= 3 (x, y) points"),
    ],
)
def test_bad_detection_json_fields(tmp_path, det_copy, mutate, message):
    mutate(det_copy)
    with pytest.raises(ValueError) as e:
        _run(tmp_path, det_copy)
    assert message in str(e.value) and "det.json" in str(e.value)


def test_malformed_json_and_bad_categories(tmp_path, det_copy):
    with pytest.raises(ValueError, match=r"det.json: malformed detection JSON"):
        _run(tmp_path, '{"images": [}')
    cats = tmp_path / "cats.json"
    cats.write_text(json.dumps([{"id": 1, "name": "person"}]))
    with pytest.raises(ValueError, match=r"cats.json: categories\[0\]: missing field 'isthing'"):
        _run(tmp_path, det_copy, cats_path=str(cats))
    with open(CATS_JSON) as f:
        cat_list = json.load(f)
    cat_list[-1]["color"] = cat_list[-2]["color"]
    cats.write_text(json.dumps(cat_list))
    with pytest.raises(ValueError, match="share the colour"):
        _run(tmp_path, det_copy, cats_path=str(cats))
    _run(tmp_path, det_copy, cats_path=str(cats), id_scheme="sequential")  # fine without colours
