"""Stuff from a model (``detr_d2.annotation.stuff_from_model``, ``tools/add_stuff_from_model.py``):
thing segments are the annotations' exactly, other pixels the model's (mapped) stuff, unannotated
model things void; coverage, workers, all-or-nothing output, untouched inputs, bad input named. The
model is a fake with a known output here; tests/test_recipe_own_data.py runs the tool with a real
(random) DETR."""

import hashlib
import json
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data.catalog import Metadata

from detr_d2.annotation import add_stuff_from_model, convert_detection_to_panoptic
from detr_d2.annotation.stuff_map import load_stuff_map, model_stuff_categories
from detr_d2.data.datasets.panoptic_metadata import build_panoptic_metadata
from detr_d2.data.panoptic_io import read_panoptic_ids
from tests.utils.scripts import load_script

H, W = 32, 40
# the model's classes (COCO-like names and ids): contiguous ids = order by id
MODEL_CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1, "color": [220, 20, 60]},
    {"id": 187, "name": "sky-other-merged", "isthing": 0, "color": [70, 130, 180]},
    {"id": 193, "name": "grass-merged", "isthing": 0, "color": [152, 251, 152]},
    {"id": 199, "name": "wall-other-merged", "isthing": 0, "color": [102, 102, 156]},
]
PERSON, SKY, GRASS, WALL = range(4)  # contiguous ids
THINGS = [
    {"id": 1, "name": "excavator", "color": [200, 120, 0]},
    {"id": 2, "name": "worker"},
]
STUFF_MAP = {
    "categories": [
        {"id": 10, "name": "background sky"},
        {"id": 11, "name": "ground", "color": [90, 90, 20]},
    ],
    "map": {
        "Sky_Other-Merged": "background sky",
        "grass-merged": "ground",
        "wall-other-merged": None,
    },
}


def _metadata():
    meta = Metadata(name="fake_coco_model")
    meta.set(**build_panoptic_metadata(MODEL_CATEGORIES))
    return meta


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture
def data(tmp_path):
    """Two images with thing annotations (polygon, RLE, an overlap, a crowd) and their files."""
    root = tmp_path / "in"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for i in range(2):
        name = f"img{i}.jpg"
        cv2.imwrite(str(root / "images" / name), rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        images.append({"id": 100 + i, "file_name": name, "height": H, "width": W})
    anns = [
        # image 0: a polygon excavator, an RLE worker overlapping it, a crowd of workers
        {
            "id": 1,
            "image_id": 100,
            "category_id": 1,
            "segmentation": [[4, 4, 20, 4, 20, 16, 4, 16]],
            "iscrowd": 0,
        },
        {
            "id": 2,
            "image_id": 100,
            "category_id": 2,
            "segmentation": _rle(_box(10, 20, 14, 24)),
            "iscrowd": 0,
        },
        {
            "id": 3,
            "image_id": 100,
            "category_id": 2,
            "segmentation": _rle(_box(26, 30, 30, 38)),
            "iscrowd": 1,
        },
        # image 1: one worker
        {
            "id": 4,
            "image_id": 101,
            "category_id": 2,
            "segmentation": _rle(_box(20, 28, 2, 10)),
            "iscrowd": 0,
        },
    ]
    instances = root / "instances.json"
    instances.write_text(json.dumps({"images": images, "annotations": anns, "categories": THINGS}))
    stuff_map = root / "stuff_map.yaml"
    import yaml

    stuff_map.write_text(yaml.safe_dump(STUFF_MAP))
    return root, str(instances), str(root / "images"), str(stuff_map)


def fake_model(bgr):
    """Sky on top, grass below, a wall strip, a void strip, and a model 'person' at x 30..36
    (unannotated in image 0 except where the crowd box is; the model's thing on the annotated
    excavator is ignored)."""
    assert bgr.shape == (H, W, 3) and bgr.dtype == np.uint8
    ids = np.zeros((H, W), np.int32)
    ids[:12] = 1  # sky
    ids[12:] = 2  # grass
    ids[:, 36:38] = 3  # wall (unmapped in STUFF_MAP: void)
    ids[:, 38:] = 0  # model void
    ids[2:24, 30:36] = 4  # a person the annotations do not have
    ids[6:10, 6:10] = 4  # a person on the annotated excavator
    segments = [
        {"id": 1, "category_id": SKY, "isthing": False, "score": 0.9},
        {"id": 2, "category_id": GRASS, "isthing": False, "score": 0.9},
        {"id": 3, "category_id": WALL, "isthing": False, "score": 0.9},
        {"id": 4, "category_id": PERSON, "isthing": True, "score": 0.9},
    ]
    return {"panoptic_seg": (torch.from_numpy(ids), segments)}


def _read(out):
    with open(os.path.join(out, "panoptic.json")) as f:
        pan = json.load(f)
    maps = {
        a["image_id"]: read_panoptic_ids(os.path.join(out, "panoptic", a["file_name"]))
        for a in pan["annotations"]
    }
    return pan, maps


def _tree_digest(path):
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(path)):
        for f in sorted(files):
            p = os.path.join(folder, f)
            digest.update(p.encode() + open(p, "rb").read())
    return digest.hexdigest()


def test_things_exact_stuff_mapped_unannotated_things_void(data, tmp_path):
    root, instances, images, stuff_map = data
    before = _tree_digest(str(root))
    out = str(tmp_path / "out")
    summary = add_stuff_from_model(
        instances, images, out, fake_model, _metadata(), stuff_map=stuff_map
    )
    assert _tree_digest(str(root)) == before  # inputs untouched
    assert sorted(os.listdir(tmp_path)) == ["in", "out"]  # no temporary folder left
    pan, maps = _read(out)
    assert [c["id"] for c in pan["categories"]] == [1, 2, 10, 11]
    assert [c["isthing"] for c in pan["categories"]] == [1, 1, 0, 0]
    assert (
        pan["categories"][3]["color"] == [90, 90, 20]
        and pan["images"][0]["file_name"] == "img0.jpg"
    )

    # the things: exactly what the detection -> panoptic converter makes of the annotations alone
    cats = tmp_path / "things.json"
    cats.write_text(json.dumps([dict(c, isthing=1) for c in THINGS]))
    ref_json, ref_root = str(tmp_path / "ref.json"), str(tmp_path / "ref")
    convert_detection_to_panoptic(instances, str(cats), ref_json, ref_root)
    ref, ref_maps = _read_ref(ref_json, ref_root)
    for ann, ref_ann in zip(pan["annotations"], ref["annotations"]):
        ids, ref_ids = maps[ann["image_id"]], ref_maps[ann["image_id"]]
        things = [s for s in ann["segments_info"] if s["category_id"] in (1, 2)]
        assert things == ref_ann["segments_info"]  # ids, categories, crowd, areas, boxes
        assert np.array_equal(
            np.where(ref_ids > 0, ids, 0), ref_ids
        )  # every annotated pixel as annotated
        assert not np.isin(ids[ref_ids == 0], [s["id"] for s in things]).any()  # and no other pixel

    # the rest, pixel by pixel, from the model's map
    ids, ref_ids = maps[100], ref_maps[100]
    seg_cat = {s["id"]: s["category_id"] for s in pan["annotations"][0]["segments_info"]}
    cat = np.vectorize(lambda i: seg_cat.get(int(i), 0))(ids)
    model = fake_model(np.zeros((H, W, 3), np.uint8))["panoptic_seg"][0].numpy()
    free = ref_ids == 0
    expected = np.select(
        [model == 1, model == 2], [10, 11], 0
    )  # sky -> 10, grass -> 11, wall/void/person -> 0
    assert np.array_equal(cat[free], expected[free])
    assert (cat[free & (model == 4)] == 0).all() and (
        free & (model == 4)
    ).sum() > 50  # unannotated person: void
    assert ids[7, 7] == ref_ids[7, 7] > 0  # the model's person on the excavator changes nothing
    stuff_segments = [
        s for s in pan["annotations"][0]["segments_info"] if s["category_id"] in (10, 11)
    ]
    assert [s["category_id"] for s in stuff_segments] == [10, 11]  # one segment per stuff class
    for s in stuff_segments:
        assert s["area"] == int((ids == s["id"]).sum()) and s["iscrowd"] == 0

    # coverage: per image and overall, in percent of the pixels
    with open(os.path.join(out, "coverage.json")) as f:
        coverage = json.load(f)
    c0 = coverage["images"][0]
    n = H * W
    assert c0["things"] == pytest.approx(100 * (ref_ids > 0).sum() / n, abs=1e-3)
    assert c0["stuff"] == pytest.approx(100 * np.isin(cat, [10, 11]).sum() / n, abs=1e-3)
    assert c0["void"] == pytest.approx(100 * (ids == 0).sum() / n, abs=1e-3)
    assert c0["void_model_thing"] == pytest.approx(
        100 * ((ids == 0) & (model == 4)).sum() / n, abs=1e-3
    )
    assert c0["things"] + c0["stuff"] + c0["void"] == pytest.approx(100, abs=1e-2)
    assert coverage["summary"]["images"] == summary.images == 2
    assert summary.void == pytest.approx((c0["void"] + coverage["images"][1]["void"]) / 2, abs=1e-2)
    text = summary.text()
    assert (
        "annotated things" in text
        and "model thing without annotation" in text
        and "img0.jpg" in text
    )


def _read_ref(json_path, root):
    with open(json_path) as f:
        ref = json.load(f)
    return ref, {
        a["image_id"]: read_panoptic_ids(os.path.join(root, a["file_name"]))
        for a in ref["annotations"]
    }


def test_model_stuff_classes_by_default_and_workers_give_the_same_files(data, tmp_path):
    root, instances, images, _ = data
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    add_stuff_from_model(instances, images, one, fake_model, _metadata())
    add_stuff_from_model(instances, images, two, fake_model, _metadata(), workers=2)
    assert (
        open(os.path.join(one, "panoptic.json")).read()
        == open(os.path.join(two, "panoptic.json")).read()
    )
    assert sorted(os.listdir(os.path.join(one, "panoptic"))) == ["img0.png", "img1.png"]
    for f in os.listdir(os.path.join(one, "panoptic")):
        assert (
            open(os.path.join(one, "panoptic", f), "rb").read()
            == open(os.path.join(two, "panoptic", f), "rb").read()
        )
    pan, maps = _read(one)
    assert [(c["id"], c["name"]) for c in pan["categories"][2:]] == [
        (187, "sky-other-merged"),
        (193, "grass-merged"),
        (199, "wall-other-merged"),
    ]
    assert pan["categories"][2]["color"] == [70, 130, 180]
    cats = {s["category_id"] for s in pan["annotations"][0]["segments_info"]}
    assert cats == {1, 2, 187, 193, 199}  # the wall is a class of its own now
    assert model_stuff_categories(_metadata())[0] == {
        "id": 187,
        "name": "sky-other-merged",
        "isthing": 0,
        "color": [70, 130, 180],
    }


def test_output_all_or_nothing_and_overwrite(data, tmp_path):
    root, instances, images, stuff_map = data
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="out exists; pass --overwrite"):
        add_stuff_from_model(instances, images, str(out), fake_model, _metadata())
    with pytest.raises(
        ValueError,
        match=r"refusing to replace .*out: it holds \['keep.txt'\], which this tool does not write",
    ):
        add_stuff_from_model(instances, images, str(out), fake_model, _metadata(), overwrite=True)
    (out / "keep.txt").unlink()
    (out / "panoptic.json").write_text("old")
    calls = []

    def failing(bgr):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("model died")
        return fake_model(bgr)

    with pytest.raises(RuntimeError, match="model died"):
        add_stuff_from_model(instances, images, str(out), failing, _metadata(), overwrite=True)
    assert os.listdir(out) == ["panoptic.json"] and sorted(os.listdir(tmp_path)) == [
        "in",
        "out",
    ]  # untouched, no temp
    assert (out / "panoptic.json").read_text() == "old"
    add_stuff_from_model(instances, images, str(out), fake_model, _metadata(), overwrite=True)
    assert sorted(os.listdir(out)) == ["coverage.json", "panoptic", "panoptic.json"]
    assert sorted(os.listdir(tmp_path)) == ["in", "out"]
    with pytest.raises(ValueError, match="refusing to write .*: it holds an input of this command"):
        add_stuff_from_model(instances, images, str(root), fake_model, _metadata(), overwrite=True)


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def test_bad_input_is_refused_with_file_and_field(data, tmp_path):
    root, instances, images, stuff_map = data
    meta = _metadata()
    run = lambda inst=instances, smap=None, out="o", img=images: add_stuff_from_model(  # noqa: E731
        inst, img, str(tmp_path / out), fake_model, meta, stuff_map=smap
    )
    model_stuff = model_stuff_categories(meta)
    bad = tmp_path / "map.json"
    with pytest.raises(
        ValueError,
        match=r"map\['sky'\]: 'sky' is not a stuff class of the model .*did you mean "
        r"\['sky-other-merged'\]",
    ):
        load_stuff_map(_write(bad, dict(STUFF_MAP, map={"sky": "ground"})), model_stuff)
    with pytest.raises(
        ValueError, match=r"map\['grass-merged'\]: 'lawn' is not one of the output categories"
    ):
        load_stuff_map(_write(bad, dict(STUFF_MAP, map={"grass-merged": "lawn"})), model_stuff)
    with pytest.raises(ValueError, match=r"map.json: missing field\(s\) \['map'\]"):
        load_stuff_map(_write(bad, {"categories": STUFF_MAP["categories"]}), model_stuff)
    with pytest.raises(ValueError, match=r"categories\[0\] \(x\): output categories are stuff"):
        load_stuff_map(
            _write(bad, dict(STUFF_MAP, categories=[{"id": 5, "name": "x", "isthing": 1}])),
            model_stuff,
        )
    with pytest.raises(
        ValueError, match=r"map\['GRASS_merged'\]: model class 'grass-merged' is already mapped"
    ):
        load_stuff_map(
            _write(bad, dict(STUFF_MAP, map={"grass-merged": "ground", "GRASS_merged": None})),
            model_stuff,
        )
    clash = _write(
        bad,
        dict(
            STUFF_MAP,
            categories=[{"id": 2, "name": "background sky"}, {"id": 11, "name": "ground"}],
        ),
    )
    with pytest.raises(
        ValueError, match=r"stuff category id\(s\) \[2\] .* are also thing ids of .*instances.json"
    ):
        run(smap=clash)

    with open(instances) as f:
        good = json.load(f)
    cases = [
        (dict(good, categories=[dict(THINGS[0], isthing=0), THINGS[1]]), ValueError,
         r"categories\[0\] \(excavator\) has isthing 0: this tool takes thing annotations only"),
        (dict(good, annotations=good["annotations"] + [dict(good["annotations"][0], id=9, category_id=7)]),  # noqa: E501
         ValueError, r"annotations\[4\] \(id 9\): category_id 7 is not in 'categories'"),
        (dict(good, images=[dict(good["images"][0], file_name="gone.jpg")], annotations=[]), FileNotFoundError,  # noqa: E501
         r"images\[0\]: image not found \(file_name 'gone.jpg'\)"),
        (dict(good, images=[dict(good["images"][0], height=H + 1)], annotations=[]), ValueError,
         r"img0.jpg: the image is 40x32 but the instances JSON says 40x33"),
        ({"images": [], "annotations": []}, ValueError, r"inst.json: missing field\(s\) \['categories'\]"),  # noqa: E501
    ]  # fmt: skip
    for content, error, message in cases:
        with pytest.raises(error, match=message):
            run(inst=_write(tmp_path / "inst.json", content))
        assert not os.path.exists(tmp_path / "o")
    no_stuff = Metadata(name="things_only_model")
    no_stuff.set(**build_panoptic_metadata(MODEL_CATEGORIES[:1]))
    with pytest.raises(ValueError, match="'things_only_model' has no stuff classes"):
        add_stuff_from_model(instances, images, str(tmp_path / "o"), fake_model, no_stuff)


def test_tool_refuses_before_building_the_model(data, tmp_path, capsys):
    root, instances, images, _ = data
    tool = load_script("add_stuff_from_model")
    base = ["--instances-json", instances, "--image-root", images, "--config-file"]
    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "coco_panoptic",  # noqa: E501
                          "detr_r50_official.yaml")  # fmt: skip
    (tmp_path / "exists").mkdir()
    assert tool.main(base + [config, "--output", str(tmp_path / "o")]) == 1
    assert f"error: {config}: MODEL.WEIGHTS is empty" in capsys.readouterr().err
    assert (
        tool.main(
            base + [config, "--output", str(tmp_path / "o"), "--opts", "MODEL.WEIGHTS", "no.pth"]
        )
        == 1
    )
    assert "error: MODEL.WEIGHTS: checkpoint not found: no.pth" in capsys.readouterr().err
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    assert (
        tool.main(
            base
            + [
                config,
                "--output",
                str(tmp_path / "exists"),
                "--opts",
                "MODEL.WEIGHTS",
                str(weights),
            ]
        )
        == 1
    )
    assert "exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert tool.main(base + [config, "--output", "o", "--workers", "0"]) == 1
    assert "error: --workers must be >= 1" in capsys.readouterr().err
