"""A resize that keeps the image's size is a ``NoOpTransform`` (``RoundedResizeShortestEdge``, the
"round" resize): the same random draws, output sizes, images and targets as Detectron2's
``ResizeShortestEdge``, whose same-size ``ResizeTransform`` is the old computation (switched in by
``tests.utils.mapper_oracles.old_mapper_computation(check=False, targets=False)``)."""

import os

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from fvcore.transforms.transform import NoOpTransform
from PIL import Image

from detr_d2.config import get_detr_cfg
from detr_d2.data import DetrPanopticDatasetMapper
from detr_d2.data.transforms import RoundedResizeShortestEdge, build_resize
from tests.utils.mapper_oracles import instances_differences, old_mapper_computation
from tests.utils.paths import ROOT
from tests.utils.quickstart_data import quickstart_dicts

QUICKSTART_CONFIG = os.path.join(ROOT, "configs", "quickstart", "detr_r18_quickstart.yaml")


def _transform_and_next_draw(aug, image, seed):
    """The transform ``aug`` draws after ``np.random.seed(seed)``, and the next number drawn (equal
    only if both consumed the generator alike)."""
    np.random.seed(seed)
    transform = aug.get_transform(image)
    return transform, np.random.random()


@pytest.mark.parametrize(
    "hw, sizes, max_size, style, kinds",
    [
        ((128, 128), (128,), 128, "choice", {"no-op"}),  # the quickstart's images
        ((100, 200), (100,), 200, "choice", {"no-op"}),
        ((100, 200), (150,), 200, "choice", {"no-op"}),  # long side capped back to 200
        ((90, 160), (64, 90, 128), 10_000, "choice", {"no-op", "resize"}),
        ((90, 160), (80, 100), 10_000, "range", {"no-op", "resize"}),
        ((480, 640), (480, 800), 1333, "choice", {"no-op", "resize"}),
        ((427, 640), (800,), 1333, "choice", {"resize"}),
    ],
)
def test_transform_and_random_draws_equal_detectron2s(hw, sizes, max_size, style, kinds):
    new = RoundedResizeShortestEdge(sizes, max_size, style, Image.BILINEAR)
    old = T.ResizeShortestEdge(sizes, max_size, style, Image.BILINEAR)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, hw + (3,), dtype=np.uint8)
    segmentation = rng.integers(0, 256, hw + (3,), dtype=np.uint8)
    boxes = np.array([[0.5, 1.25, hw[1] - 3.5, hw[0] - 0.75], [10, 20, 30, 40]], np.float32)
    seen = set()
    for seed in range(40):
        t_new, next_new = _transform_and_next_draw(new, image, seed)
        t_old, next_old = _transform_and_next_draw(old, image, seed)
        assert next_new == next_old, "the random draws differ from Detectron2's"
        assert isinstance(t_old, T.ResizeTransform)
        if (t_old.new_h, t_old.new_w) == (t_old.h, t_old.w):
            assert isinstance(t_new, NoOpTransform)
            seen.add("no-op")
        else:
            assert isinstance(t_new, T.ResizeTransform)
            assert (t_new.h, t_new.w, t_new.new_h, t_new.new_w, t_new.interp) == (
                t_old.h,
                t_old.w,
                t_old.new_h,
                t_old.new_w,
                t_old.interp,
            )
            seen.add("resize")
        assert np.array_equal(t_new.apply_image(image), t_old.apply_image(image))
        assert np.array_equal(
            t_new.apply_segmentation(segmentation), t_old.apply_segmentation(segmentation)
        )
        assert np.array_equal(t_new.apply_box(boxes), t_old.apply_box(boxes))
    assert seen == kinds


def test_round_rounding_builds_the_no_op_resize():
    assert isinstance(build_resize("round", [128], 128), RoundedResizeShortestEdge)


def test_quickstart_training_mapper_equals_detectron2s_same_size_resize(tmp_path):
    """The quickstart's mapper (flip, then a resize that never changes its 128x128 images): images,
    targets and the random draws equal to those with Detectron2's same-size ``ResizeTransform``."""
    cfg = get_detr_cfg(QUICKSTART_CONFIG)
    dicts = quickstart_dicts(cfg, str(tmp_path), num_images=8, seed=0)
    mapper = DetrPanopticDatasetMapper(cfg, is_train=True)
    assert isinstance(mapper.augmentations.augs[-1], RoundedResizeShortestEdge)
    for seed in range(4):
        np.random.seed(seed)
        new = [mapper(d) for d in dicts]
        next_new = np.random.random()
        np.random.seed(seed)
        with old_mapper_computation(check=False, targets=False):
            old = [mapper(d) for d in dicts]
        next_old = np.random.random()
        assert next_new == next_old
        for a, b in zip(new, old):
            assert torch.equal(a["image"], b["image"])
            assert instances_differences(a["instances"], b["instances"]) == []
