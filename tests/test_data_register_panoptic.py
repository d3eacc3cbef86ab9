"""Panoptic dataset registration: metadata, loading, COCO checks and bad input."""

import json
import os
import shutil
import uuid

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

import detr_d2  # noqa: F401  (registers datasets)
from detr_d2.data.datasets import (
    ClassSlots,
    build_panoptic_metadata,
    class_slots,
    load_panoptic_json,
    num_classes_from_metadata,
    register_panoptic_dataset,
)
from detr_d2.data.datasets.panoptic_metadata import missing_panoptic_metadata

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "coco_panoptic_sample")
SAMPLE_JSON = os.path.join(SAMPLE, "panoptic_examples.json")
SAMPLE_PNGS = os.path.join(SAMPLE, "panoptic_examples")
SAMPLE_IMAGES = os.path.join(SAMPLE, "input_images")


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def sample_copy(tmp_path):
    """A writable copy of the COCO sample: (image dir, PNG dir, JSON path, parsed JSON)."""
    images, pngs = tmp_path / "images", tmp_path / "panoptic"
    shutil.copytree(SAMPLE_IMAGES, images)
    shutil.copytree(SAMPLE_PNGS, pngs)
    with open(SAMPLE_JSON) as f:
        data = json.load(f)
    return str(images), str(pngs), tmp_path / "panoptic.json", data


def _write(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def test_metadata_contiguous_ids_follow_sorted_dataset_ids_with_stuff_listed_first():
    # Stuff listed before things (like the construction-site set), ids not contiguous.
    cats = [
        {"id": 40, "name": "road", "isthing": 0, "color": [1, 2, 3]},
        {"id": 7, "name": "sky", "isthing": 0},
        {"id": 12, "name": "worker", "isthing": 1, "color": [9, 9, 9]},
        {"id": 3, "name": "crane", "isthing": 1},
    ]
    meta = build_panoptic_metadata(cats)
    assert meta["thing_dataset_id_to_contiguous_id"] == {3: 0, 12: 2}
    assert meta["stuff_dataset_id_to_contiguous_id"] == {7: 1, 40: 3}
    assert meta["thing_classes"] == meta["stuff_classes"] == ["crane", "sky", "worker", "road"]
    assert meta["thing_colors"][2] == [9, 9, 9] and meta["stuff_colors"][3] == [1, 2, 3]
    assert all(len(c) == 3 for c in meta["thing_colors"])  # missing colours filled


@pytest.mark.parametrize(
    "bad, message",
    [
        ([{"id": 1, "name": "a"}], "missing field 'isthing'"),
        (
            [{"id": 1, "name": "a", "isthing": 1}, {"id": 1, "name": "b", "isthing": 0}],
            "duplicate category id 1",
        ),
        ([{"id": "1", "name": "a", "isthing": 1}], "'id' must be an integer"),
        (
            [{"id": 1, "name": "a", "isthing": 1, "color": [0, 300, 0]}],
            "'color' must be three integers",
        ),
        ([], "non-empty list"),
    ],
)
def test_bad_categories_are_reported_with_source(bad, message):
    with pytest.raises(ValueError, match=message) as e:
        build_panoptic_metadata(bad, "my_cats.json")
    assert "my_cats.json" in str(e.value)


def test_register_sample_reads_categories_from_json_and_loads_d2_dicts():
    name = _name("sample")
    meta = register_panoptic_dataset(name, SAMPLE_IMAGES, SAMPLE_PNGS, SAMPLE_JSON)
    md = MetadataCatalog.get(name)
    assert missing_panoptic_metadata(md) == []
    assert md.evaluator_type == "coco_panoptic_seg" and md.ignore_label == 255
    assert md.label_divisor == 1000 and md.panoptic_json == SAMPLE_JSON
    assert len(md.thing_classes) == 133 and md.thing_classes[80] == md.stuff_classes[80]
    assert num_classes_from_metadata(name) == 133
    dicts = DatasetCatalog.get(name)
    assert [d["image_id"] for d in dicts] == [142238, 439180]
    d = dicts[0]
    assert d["file_name"] == os.path.join(SAMPLE_IMAGES, "000000142238.jpg")
    assert d["pan_seg_file_name"] == os.path.join(SAMPLE_PNGS, "000000142238.png")
    assert (d["height"], d["width"]) == (427, 640)
    assert len(d["segments_info"]) == 18
    by_id = {s["id"]: s for s in d["segments_info"]}
    person = by_id[3937500]  # COCO person (dataset id 1) -> contiguous 0
    assert person["category_id"] == 0 and person["isthing"] is True and person["iscrowd"] == 0
    assert person["bbox"] == [282, 207, 48, 149] and person["area"] == 3528
    crowd = by_id[3153362]
    assert crowd["iscrowd"] == 1
    stuff = by_id[2330219]  # dataset id 184 (tree-merged)
    assert stuff["isthing"] is False
    assert stuff["category_id"] == meta["stuff_dataset_id_to_contiguous_id"][184]
    assert md.stuff_classes[stuff["category_id"]] == "tree-merged"


def test_any_image_extension_without_images_section(sample_copy, tmp_path):
    images, pngs, json_path, data = sample_copy
    from PIL import Image

    # One image as PNG, the other as .jpeg; no 'images' section to look up names in.
    Image.open(os.path.join(images, "000000142238.jpg")).save(
        os.path.join(images, "000000142238.png")
    )
    os.remove(os.path.join(images, "000000142238.jpg"))
    os.rename(os.path.join(images, "000000439180.jpg"), os.path.join(images, "000000439180.jpeg"))
    del data["images"]
    _write(json_path, data)
    meta = build_panoptic_metadata(data["categories"])
    dicts = load_panoptic_json(str(json_path), images, pngs, meta)
    assert [os.path.basename(d["file_name"]) for d in dicts] == [
        "000000142238.png",
        "000000439180.jpeg",
    ]
    assert "height" not in dicts[0]  # unknown without 'images'; the mapper fills it in


def test_image_listed_with_wrong_extension_is_found_by_stem(sample_copy):
    images, pngs, json_path, data = sample_copy
    os.rename(os.path.join(images, "000000439180.jpg"), os.path.join(images, "000000439180.webp"))
    _write(json_path, data)
    dicts = load_panoptic_json(
        str(json_path), images, pngs, build_panoptic_metadata(data["categories"])
    )
    assert dicts[1]["file_name"].endswith("000000439180.webp")


def test_missing_image_and_png_error_names_files_and_skip_mode_counts(sample_copy, caplog):
    images, pngs, json_path, data = sample_copy
    os.remove(os.path.join(images, "000000142238.jpg"))
    os.remove(os.path.join(pngs, "000000439180.png"))
    _write(json_path, data)
    meta = build_panoptic_metadata(data["categories"])
    with pytest.raises(FileNotFoundError) as e:
        load_panoptic_json(str(json_path), images, pngs, meta)
    msg = str(e.value)
    assert str(json_path) in msg and "000000142238" in msg and "000000439180.png" in msg
    assert "'file_name'" in msg and "'pan_seg_file_name'" in msg and "1 image(s)" in msg
    assert load_panoptic_json(str(json_path), images, pngs, meta, missing="skip") == []
    assert "1 image(s) missing" in caplog.text and "skipped" in caplog.text


def test_unknown_category_id_names_json_image_and_segment(sample_copy):
    images, pngs, json_path, data = sample_copy
    data["annotations"][1]["segments_info"][3]["category_id"] = 999
    _write(json_path, data)
    with pytest.raises(ValueError) as e:
        load_panoptic_json(
            str(json_path), images, pngs, build_panoptic_metadata(data["categories"])
        )
    msg = str(e.value)
    assert str(json_path) in msg and "000000439180.png" in msg and "segments_info[3]" in msg
    assert "category_id 999" in msg


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"annotations": [', "malformed panoptic JSON"),
        ('{"categories": []}', "missing field(s) ['annotations']"),
        (
            '{"annotations": [{"image_id": 1, "segments_info": []}]}',
            "annotations[0]: missing field(s) ['file_name']",
        ),
    ],
)
def test_malformed_json_is_reported_with_file_name(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    meta = build_panoptic_metadata([{"id": 1, "name": "a", "isthing": 1}])
    with pytest.raises(ValueError) as e:
        load_panoptic_json(str(path), str(tmp_path), str(tmp_path), meta)
    assert str(path) in str(e.value) and message in str(e.value)


def test_register_twice_and_categories_from_missing_json_fail_clearly(tmp_path):
    name = _name("dup")
    cats = [{"id": 1, "name": "a", "isthing": 1}]
    register_panoptic_dataset(name, "i", "p", "p.json", categories=cats)
    with pytest.raises(ValueError, match="already registered"):
        register_panoptic_dataset(name, "i", "p", "p.json", categories=cats)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        register_panoptic_dataset(_name("x"), "i", "p", str(tmp_path / "nope.json"))


def test_coco_panoptic_names_keep_detectron2_registration_and_have_standard_metadata():
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    from detr_d2.data.datasets.register_coco_panoptic import COCO_PANOPTIC_SPLITS

    for name, (image_root, panoptic_root, panoptic_json, _) in COCO_PANOPTIC_SPLITS.items():
        md = MetadataCatalog.get(name)
        assert name in DatasetCatalog.list()
        assert missing_panoptic_metadata(md) == [], name
        assert md.panoptic_json.endswith(panoptic_json) and md.image_root.endswith(image_root)
        assert md.panoptic_root.endswith(panoptic_root)
    md = MetadataCatalog.get("coco_2017_val_panoptic")
    assert md.panoptic_root.endswith(os.path.join("coco", "panoptic_val2017"))
    assert md.image_root.endswith(os.path.join("coco", "val2017"))
    # Same contiguous convention as ours: position in the id-sorted list.
    ours = build_panoptic_metadata(COCO_CATEGORIES)
    assert md.thing_dataset_id_to_contiguous_id == ours["thing_dataset_id_to_contiguous_id"]
    assert md.stuff_dataset_id_to_contiguous_id == ours["stuff_dataset_id_to_contiguous_id"]


def test_missing_metadata_is_detected():
    name = _name("incomplete")
    MetadataCatalog.get(name).set(thing_dataset_id_to_contiguous_id={1: 0})
    problems = missing_panoptic_metadata(MetadataCatalog.get(name))
    assert "missing 'stuff_dataset_id_to_contiguous_id'" in problems
    sep = _name("separated")
    meta = build_panoptic_metadata(
        [{"id": 1, "name": "a", "isthing": 1}, {"id": 2, "name": "b", "isthing": 0}]
    )
    meta.update(
        thing_classes=["a"],
        panoptic_root="",
        panoptic_json="",
        image_root="",
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        label_divisor=1000,
    )
    MetadataCatalog.get(sep).set(**meta)
    assert any(
        "'thing_classes' has 1 names" in p
        for p in missing_panoptic_metadata(MetadataCatalog.get(sep))
    )


def test_class_slots_check_num_classes_with_messages():
    name = _name("nc")
    cats = [{"id": 5, "name": "a", "isthing": 1}, {"id": 9, "name": "b", "isthing": 0}]
    register_panoptic_dataset(name, "i", "p", "p.json", categories=cats)
    assert class_slots(2, "contiguous", [name]) == ClassSlots(2, [True, False])
    assert class_slots(0, "contiguous", [name]).num_slots == 2  # 0 = derive from the metadata
    with pytest.raises(
        ValueError, match=r"NUM_CLASSES = 133 but dataset .* has 2 classes.*NUM_CLASSES 2"
    ):
        class_slots(133, "contiguous", [name])
    slots = class_slots(10, "dataset_id", [name])
    assert slots.label_map == [-1] * 5 + [0] + [-1] * 3 + [1] and slots.num_slots == 10
    with pytest.raises(ValueError, match="has category id 9 .* need at least 10"):
        class_slots(9, "dataset_id", [name])
    with pytest.raises(ValueError, match="CLASS_SLOTS must be"):
        class_slots(2, "dataset", [name])


def test_class_slots_checks_every_dataset():
    """All datasets of DATASETS.TRAIN/TEST with panoptic metadata must share the model's classes."""
    a, b = _name("nc_a"), _name("nc_b")
    register_panoptic_dataset(
        a, "i", "p", "p.json", categories=[{"id": 1, "name": "x", "isthing": 1}]
    )
    register_panoptic_dataset(
        b, "i", "p", "p.json", categories=[{"id": 1, "name": "x", "isthing": 0}]
    )
    with pytest.raises(ValueError, match="have different classes"):
        class_slots(1, "contiguous", [a, "no_metadata_here", b])
    assert class_slots(1, "contiguous", [a, a]).num_slots == 1


def test_ensure_coco_panoptic_registers_only_missing_names(monkeypatch, tmp_path):
    from detr_d2.data.datasets import register_coco_panoptic as rcp

    new, broken = _name("coco_new_panoptic"), _name("coco_broken_panoptic")
    DatasetCatalog.register(broken, lambda: [])
    MetadataCatalog.get(broken).set(evaluator_type="coco_panoptic_seg")
    splits = {
        new: (
            "coco/val2017",
            "coco/panoptic_val2017",
            "coco/annotations/panoptic_val2017.json",
            "x.json",
        ),
        broken: ("a", "b", "c", "d"),
        "coco_2017_val_panoptic": rcp.COCO_PANOPTIC_SPLITS["coco_2017_val_panoptic"],
    }
    before = MetadataCatalog.get("coco_2017_val_panoptic").panoptic_json
    monkeypatch.setattr(rcp, "COCO_PANOPTIC_SPLITS", splits)
    problems = rcp.ensure_coco_panoptic(str(tmp_path))
    assert list(problems) == [broken] and "missing 'thing_classes'" in problems[broken]
    md = MetadataCatalog.get(new)
    assert md.panoptic_json == str(tmp_path / "coco/annotations/panoptic_val2017.json")
    assert num_classes_from_metadata(new) == 133
    assert MetadataCatalog.get("coco_2017_val_panoptic").panoptic_json == before  # not clobbered
