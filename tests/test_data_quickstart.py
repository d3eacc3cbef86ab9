"""The synthetic quickstart dataset: format, content rules, determinism, lazy registration."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from panopticapi.utils import rgb2id
from PIL import Image

from detr_d2.data import DetrPanopticDatasetMapper
from detr_d2.data.datasets import build_panoptic_metadata, load_panoptic_json
from detr_d2.data.datasets.panoptic_metadata import missing_panoptic_metadata
from detr_d2.data.datasets.quickstart import (
    QUICKSTART_CATEGORIES,
    ensure_quickstart_split,
    generate_quickstart_dataset,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 24


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("quickstart"))
    json_path = generate_quickstart_dataset(root, "train", num_images=N, image_size=128, seed=0)
    return root, json_path


def _digest(folder):
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            h.update(name.encode() + f.read())
    return h.hexdigest()


def test_files_are_real_coco_panoptic_and_segments_match_pngs(small_split):
    root, json_path = small_split
    with open(json_path) as f:
        data = json.load(f)
    assert data["categories"] == QUICKSTART_CATEGORIES
    assert len(data["images"]) == len(data["annotations"]) == N
    names = {c["id"]: c["name"] for c in data["categories"]}
    n_things, n_touching = [], 0
    for img, ann in zip(data["images"], data["annotations"]):
        image = Image.open(os.path.join(root, "train", img["file_name"]))
        assert image.mode == "RGB" and image.size == (128, 128) == (img["width"], img["height"])
        ids = rgb2id(np.asarray(Image.open(os.path.join(root, "panoptic_train", ann["file_name"]))))
        listed = {s["id"] for s in ann["segments_info"]}
        assert set(np.unique(ids)) - {0} == listed
        for s in ann["segments_info"]:
            mask = ids == s["id"]
            ys, xs = np.nonzero(mask)
            assert s["area"] == mask.sum() and s["iscrowd"] == 0
            assert s["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
        cats = [names[s["category_id"]] for s in ann["segments_info"]]
        things = [c for c in cats if c in ("circle", "square", "triangle")]
        stuff = [c for c in cats if c in ("sky", "grass", "water")]
        assert 1 <= len(things) <= 4 and 2 <= len(stuff) <= 3 and len(set(stuff)) == len(stuff)
        assert all(
            s["area"] >= 150 for s in ann["segments_info"] if names[s["category_id"]] in things
        )
        assert (ids == 0).mean() < 0.05  # void only for rare slivers of stuff
        n_things.append(len(things))
        # touching / occluding things: a thing pixel next to another thing's pixel
        thing_ids = [s["id"] for s in ann["segments_info"] if names[s["category_id"]] in things]
        is_thing = np.isin(ids, thing_ids)
        right = is_thing[:, :-1] & is_thing[:, 1:] & (ids[:, :-1] != ids[:, 1:])
        down = is_thing[:-1] & is_thing[1:] & (ids[:-1] != ids[1:])
        n_touching += bool(right.any() or down.any())
    assert len(set(n_things)) >= 3  # 1..4 things vary
    assert n_touching >= 3  # touching/occlusion happens


def test_images_show_the_classes(small_split):
    """Stuff colours are recognisable: mean colour per class is far from the other classes'."""
    root, json_path = small_split
    with open(json_path) as f:
        data = json.load(f)
    means = {}
    for img, ann in zip(data["images"], data["annotations"]):
        image = np.asarray(Image.open(os.path.join(root, "train", img["file_name"])), float)
        ids = rgb2id(np.asarray(Image.open(os.path.join(root, "panoptic_train", ann["file_name"]))))
        for s in ann["segments_info"]:
            if s["category_id"] >= 4:
                means.setdefault(s["category_id"], []).append(image[ids == s["id"]].mean(0))
    centres = {k: np.mean(v, 0) for k, v in means.items()}
    assert len(centres) == 3
    for k, v in means.items():
        for m in v:  # each segment is nearest to its own class centre
            assert min(centres, key=lambda c: np.abs(centres[c] - m).sum()) == k


def test_generation_is_deterministic_and_seed_dependent(small_split, tmp_path):
    root, _ = small_split
    generate_quickstart_dataset(str(tmp_path / "a"), "train", num_images=N, seed=0, workers=2)
    generate_quickstart_dataset(str(tmp_path / "b"), "train", num_images=N, seed=1)
    assert _digest(os.path.join(root, "train")) == _digest(str(tmp_path / "a" / "train"))
    assert _digest(os.path.join(root, "panoptic_train")) == _digest(
        str(tmp_path / "a" / "panoptic_train")
    )
    assert _digest(os.path.join(root, "train")) != _digest(str(tmp_path / "b" / "train"))
    leftovers = [
        f
        for d in ("train", "panoptic_train")
        for f in os.listdir(tmp_path / "a" / d)
        if f.endswith(".tmp")
    ]
    assert leftovers == []
    umask = os.umask(0)
    os.umask(umask)
    for path in (tmp_path / "a" / "panoptic_train.json", tmp_path / "a" / "train" / "000000.jpg"):
        assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_ensure_generates_only_when_missing(tmp_path):
    root = str(tmp_path)
    json_path = ensure_quickstart_split(root, "val", 3, seed=1)
    mtime = os.path.getmtime(json_path)
    assert ensure_quickstart_split(root, "val", 3, seed=1) == json_path
    assert os.path.getmtime(json_path) == mtime  # not regenerated
    ensure_quickstart_split(root, "val", 4, seed=1)  # other size -> regenerated
    with open(json_path) as f:
        assert len(json.load(f)["images"]) == 4


def test_mapper_on_quickstart(small_split):
    root, json_path = small_split
    meta = build_panoptic_metadata(QUICKSTART_CATEGORIES)
    d = load_panoptic_json(
        json_path, os.path.join(root, "train"), os.path.join(root, "panoptic_train"), meta
    )[0]
    out = DetrPanopticDatasetMapper(True, augmentations=[], image_format="RGB")(d)
    inst = out["instances"]
    assert out["image"].shape == (3, 128, 128) and len(inst) == len(d["segments_info"])
    assert set(inst.gt_classes.tolist()) <= set(range(6))
    assert not inst.gt_is_crowd.any() and (inst.gt_boxes.area() > 0).all()
    assert torch.equal(
        inst.gt_masks.tensor.sum((1, 2)), torch.tensor([s["area"] for s in d["segments_info"]])
    )


def test_registered_splits_metadata():
    for name in ("detr_quickstart_train", "detr_quickstart_val"):
        md = MetadataCatalog.get(name)
        assert missing_panoptic_metadata(md) == []
        assert md.thing_classes == ["circle", "square", "triangle", "sky", "grass", "water"]
        assert md.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
        assert md.stuff_dataset_id_to_contiguous_id == {4: 3, 5: 4, 6: 5}


def test_env_root_and_lazy_generation_in_a_fresh_process(tmp_path):
    code = (
        "import detr_d2, os\n"
        "from detectron2.data import DatasetCatalog, MetadataCatalog\n"
        "md = MetadataCatalog.get('detr_quickstart_val')\n"
        "root = os.environ['DETR_D2_QUICKSTART_ROOT']\n"
        "assert md.panoptic_json == os.path.join(root, 'panoptic_val.json')\n"
        "assert not os.path.exists(md.panoptic_json)\n"
        "d = DatasetCatalog.get('detr_quickstart_val')\n"
        "assert len(d) == 100 and os.path.exists(md.panoptic_json)\n"
        "assert d[0]['height'] == 128 and d[0]['file_name'].endswith('val/000000.jpg')\n"
        "print('ok')\n"
    )
    env = dict(os.environ, DETR_D2_QUICKSTART_ROOT=str(tmp_path / "qs"))
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]
    assert len(os.listdir(tmp_path / "qs" / "val")) == 100
