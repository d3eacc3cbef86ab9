"""Dataset integrity (issue 21 item 3): repeated image / segment ids, segment ids in the JSON but
not in the PNG or the other way round, file names that leave their root, a missing image named by
its own name, and prediction PNGs named by image id. Each is refused with a message naming the
file, the entry and the id, where today the data would be mismatched silently."""

import copy
import json
import os
import shutil
import uuid

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from detr_d2.data import DetrPanopticDatasetMapper
from detr_d2.data.datasets import build_panoptic_metadata, load_panoptic_json
from detr_d2.data.panoptic_io import id2rgb, join_under, prediction_png_name, read_panoptic_ids
from detr_d2.evaluation import COCOPanopticEvaluatorWithPerClass, FastCOCOPanopticEvaluator
from tests.utils.evaluation import (
    COCO_SAMPLE,
    COCO_SAMPLE_JSON,
    COCO_SAMPLE_PNGS,
    contiguous_output,
    quiet_pq_compute,
    register_panoptic,
)

IMAGES = os.path.join(COCO_SAMPLE, "input_images")


@pytest.fixture
def sample(tmp_path):
    """A writable copy of the COCO sample: (image dir, PNG dir, JSON path, parsed JSON)."""
    images, pngs = tmp_path / "images", tmp_path / "panoptic"
    shutil.copytree(IMAGES, images)
    shutil.copytree(COCO_SAMPLE_PNGS, pngs)
    with open(COCO_SAMPLE_JSON) as f:
        data = json.load(f)
    return str(images), str(pngs), tmp_path / "panoptic.json", data


def _load(sample, data):
    images, pngs, json_path, _ = sample
    json_path.write_text(json.dumps(data))
    meta = build_panoptic_metadata(data["categories"])
    return load_panoptic_json(str(json_path), images, pngs, meta)


def _error(sample, data, exc=ValueError):
    with pytest.raises(exc) as e:
        _load(sample, data)
    assert str(sample[2]) in str(e.value)
    return str(e.value)


def test_duplicate_image_id_in_annotations_is_refused_naming_both_entries(sample):
    """Today the second image would be trained with the first's PNG (both share one id)."""
    data = copy.deepcopy(sample[3])
    data["annotations"][1]["image_id"] = data["annotations"][0]["image_id"]
    msg = _error(sample, data)
    image_id = data["annotations"][0]["image_id"]
    assert f"image_id {image_id}" in msg and "annotations[1]" in msg and "annotations[0]" in msg


def test_duplicate_image_id_in_images_is_refused(sample):
    data = copy.deepcopy(sample[3])
    data["images"][1]["id"] = data["images"][0]["id"]
    msg = _error(sample, data)
    assert "images[1]" in msg and "images[0]" in msg and f"id {data['images'][0]['id']}" in msg


def test_two_annotations_sharing_one_png_are_refused(sample):
    data = copy.deepcopy(sample[3])
    data["annotations"][1]["file_name"] = data["annotations"][0]["file_name"]
    msg = _error(sample, data)
    assert "file_name" in msg and data["annotations"][0]["file_name"] in msg


def test_duplicate_segment_id_within_an_image_is_refused(sample):
    data = copy.deepcopy(sample[3])
    segments = data["annotations"][1]["segments_info"]
    segments[2]["id"] = segments[0]["id"]
    msg = _error(sample, data)
    ann = data["annotations"][1]
    assert f"image_id {ann['image_id']}" in msg and ann["file_name"] in msg
    assert "segments_info[2]" in msg and f"segment id {segments[0]['id']}" in msg


@pytest.mark.parametrize("name", ["../../x.png", "/etc/passwd", "sub/../../x.png"])
def test_png_file_name_leaving_the_panoptic_root_is_refused(sample, name):
    data = copy.deepcopy(sample[3])
    data["annotations"][0]["file_name"] = name
    msg = _error(sample, data)
    assert repr(name) in msg and "annotations[0]" in msg and "leaves its folder" in msg


@pytest.mark.parametrize("name", ["../../x.jpg", "/etc/passwd"])
def test_image_file_name_leaving_the_image_root_is_refused(sample, name, tmp_path):
    # The escaping file exists, so today it would be read.
    data = copy.deepcopy(sample[3])
    if not os.path.isabs(name):
        target = os.path.normpath(os.path.join(sample[0], name))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy(os.path.join(IMAGES, "000000142238.jpg"), target)
    data["images"][0]["file_name"] = name
    msg = _error(sample, data)
    assert repr(name) in msg and f"image_id {data['images'][0]['id']}" in msg


def test_a_name_inside_the_root_is_kept():
    assert join_under("/r", "a/../b.png", "w") == os.path.join("/r", "a/../b.png")
    assert join_under("/r", "..b.png", "w") == "/r/..b.png"
    with pytest.raises(ValueError, match="expected a file name"):
        join_under("/r", 5, "w")


def test_missing_image_is_reported_by_the_image_name_not_the_png(sample):
    images, pngs, json_path, data = sample
    name = data["images"][0]["file_name"]
    os.remove(os.path.join(images, name))
    msg = _error(sample, data, FileNotFoundError)
    assert f"'{name}'" in msg and "1 image(s) missing" in msg


def _mapper_dict(sample, data, index=1):
    return _load(sample, data)[index]


def _mapper():
    return DetrPanopticDatasetMapper(True, augmentations=[], image_format="BGR")


def test_mapper_refuses_a_listed_segment_absent_from_the_png(sample):
    """Today the entry is silently dropped (as if cropped away)."""
    data = copy.deepcopy(sample[3])
    ann = data["annotations"][1]
    ann["segments_info"].append(dict(ann["segments_info"][0], id=123456))
    d = _mapper_dict(sample, data)
    with pytest.raises(ValueError) as e:
        _mapper()(d)
    msg = str(e.value)
    assert d["pan_seg_file_name"] in msg and "[123456]" in msg and "no pixel in the PNG" in msg
    assert f"image_id {ann['image_id']}" in msg


def test_mapper_refuses_a_png_segment_missing_from_the_json(sample):
    data = copy.deepcopy(sample[3])
    ann = data["annotations"][1]
    dropped = ann["segments_info"].pop(0)
    d = _mapper_dict(sample, data)
    with pytest.raises(ValueError) as e:
        _mapper()(d)
    msg = str(e.value)
    assert d["pan_seg_file_name"] in msg and f"[{dropped['id']}]" in msg
    assert "appear in the PNG but not in 'segments_info'" in msg


def test_mapper_accepts_the_consistent_sample(sample):
    for d in _load(sample, sample[3]):
        assert len(_mapper()(d)["instances"]) == len(d["segments_info"])


def _register(sample, data):
    images, pngs, json_path, _ = sample
    json_path.write_text(json.dumps(data))
    return register_panoptic(f"faults_data_{uuid.uuid4().hex[:8]}", str(json_path), pngs, images)


def _gt_outputs(name, data, pngs):
    meta = MetadataCatalog.get(name)
    inputs, outputs = [], []
    for ann in data["annotations"]:
        ids = read_panoptic_ids(os.path.join(pngs, ann["file_name"]))
        present = set(np.unique(ids).tolist())
        segments = [s for s in ann["segments_info"] if s["id"] in present]
        inputs.append({"image_id": ann["image_id"], "file_name": ann["file_name"]})
        outputs.append(contiguous_output(ids, segments, meta))
    return inputs, outputs


@pytest.mark.parametrize("fault", ["absent_from_png", "absent_from_json"])
def test_evaluator_ground_truth_ids_must_match_the_png(sample, fault):
    """Today panopticapi counts a listed-but-absent GT segment as a false negative and ignores an
    unlisted region: PQ changes silently."""
    data = copy.deepcopy(sample[3])
    ann = data["annotations"][0]
    if fault == "absent_from_png":
        ann["segments_info"].append(dict(ann["segments_info"][0], id=654321))
    else:
        ann["segments_info"].pop(0)
    name = _register(sample, data)
    inputs, outputs = _gt_outputs(name, sample[3], sample[1])
    evaluator = FastCOCOPanopticEvaluator(name, num_workers=0)
    evaluator.reset()
    with pytest.raises(ValueError) as e:
        for x, y in zip(inputs, outputs):
            evaluator.process([x], [y])
        evaluator.evaluate()
    msg = str(e.value)
    assert ann["file_name"] in msg and str(sample[2]) in msg
    assert f"image_id {ann['image_id']}" in msg
    DatasetCatalog.remove(name)


def test_evaluator_ground_truth_png_leaving_its_root_is_refused(sample):
    data = copy.deepcopy(sample[3])
    data["annotations"][0]["file_name"] = "../panoptic/" + data["annotations"][0]["file_name"]
    name = _register(sample, data)
    inputs, outputs = _gt_outputs(name, sample[3], sample[1])
    evaluator = FastCOCOPanopticEvaluator(name, num_workers=0)
    evaluator.reset()
    with pytest.raises(ValueError, match="leaves its folder"):
        evaluator.process(inputs[:1], outputs[:1])


def test_evaluator_duplicate_gt_segment_id_is_refused(sample):
    data = copy.deepcopy(sample[3])
    segments = data["annotations"][0]["segments_info"]
    segments[1]["id"] = segments[0]["id"]
    name = _register(sample, data)
    with pytest.raises(ValueError, match=r"segments_info\[1\]: segment id"):
        FastCOCOPanopticEvaluator(name, num_workers=0)


@pytest.mark.parametrize(
    "evaluator_cls", [FastCOCOPanopticEvaluator, COCOPanopticEvaluatorWithPerClass]
)
def test_predictions_of_images_sharing_a_stem_get_one_png_each(sample, tmp_path, evaluator_cls):
    """``a/000000.jpg`` and ``b/000000.jpg``: Detectron2's naming by stem wrote one PNG for both
    (the second replaced the first); named by image id, both are kept and pq_compute reads them."""
    name = _register(sample, sample[3])
    inputs, outputs = _gt_outputs(name, sample[3], sample[1])
    inputs[0]["file_name"], inputs[1]["file_name"] = "a/000000.jpg", "b/000000.jpg"
    out = tmp_path / "out"
    if evaluator_cls is FastCOCOPanopticEvaluator:
        evaluator = evaluator_cls(name, str(out), write_predictions=True, num_workers=0)
    else:
        evaluator = evaluator_cls(name, str(out))
    evaluator.reset()
    for x, y in zip(inputs, outputs):
        evaluator.process([x], [y])
    results = evaluator.evaluate()
    assert results["panoptic_seg"]["PQ"] == pytest.approx(100.0)
    with open(out / "predictions.json") as f:
        written = json.load(f)
    names = [a["file_name"] for a in written["annotations"]]
    assert names == [prediction_png_name(x["image_id"]) for x in inputs]
    if evaluator_cls is FastCOCOPanopticEvaluator:
        assert sorted(os.listdir(out / "predictions")) == sorted(names)
        ref = quiet_pq_compute(str(sample[2]), str(out / "predictions.json"))
        assert ref["All"]["pq"] == pytest.approx(1.0)
    DatasetCatalog.remove(name)


def test_prediction_png_name_never_names_a_folder():
    assert prediction_png_name(139) == "139.png"
    assert prediction_png_name("a/0") != prediction_png_name("a_0")
    assert "/" not in prediction_png_name("../../x") and prediction_png_name("..") != "..png"


def test_png_with_colour_of_unlisted_segment_names_its_colour(sample):
    """The colour an annotator sees is named next to the id."""
    data = copy.deepcopy(sample[3])
    ann = data["annotations"][0]
    png = os.path.join(sample[1], ann["file_name"])
    arr = np.array(Image.open(png).convert("RGB"))
    arr[:2, :2] = id2rgb(777)
    Image.fromarray(arr).save(png)
    d = _mapper_dict(sample, data, 0)
    with pytest.raises(ValueError, match=r"\[777\] \(RGB \[\(9, 3, 0\)\]\)"):
        _mapper()(d)
