"""DETR augmentations: exact resize sizes, crop branch, config handling."""

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from fvcore.transforms.transform import CropTransform, HFlipTransform, NoOpTransform

from detr_d2 import add_detr_config
from detr_d2.data.transforms import (
    DetrResizeShortestEdge,
    build_detr_test_augmentation,
    build_detr_train_augmentation,
    detr_resize_output_shape,
)


def _cfg(**input_overrides):
    cfg = get_cfg()
    add_detr_config(cfg)
    for key, value in input_overrides.items():
        node = cfg.INPUT
        *path, last = key.split("__")
        for p in path:
            node = node[p]
        node[last] = value
    return cfg


def _apply(augs, h, w):
    aug_input = T.AugInput(np.zeros((h, w, 3), np.uint8))
    tfms = T.AugmentationList(augs)(aug_input)
    return aug_input.image.shape[:2], tfms


@pytest.mark.parametrize(
    "hw, detr, d2",
    [
        ((427, 640), (800, 1199), (800, 1199)),
        ((480, 640), (800, 1066), (800, 1067)),  # DETR truncates, Detectron2 rounds
        ((640, 480), (1066, 800), (1067, 800)),
        ((375, 500), (800, 1066), (800, 1067)),
        ((360, 640), (750, 1333), (750, 1333)),  # long side capped: short = round(1333*360/640)
        ((612, 612), (800, 800), (800, 800)),
    ],
)
def test_detr_resize_matches_detr_formula_and_differs_from_d2_where_documented(hw, detr, d2):
    assert detr_resize_output_shape(hw[0], hw[1], 800, 1333) == detr
    assert T.ResizeShortestEdge.get_output_shape(hw[0], hw[1], 800, 1333) == d2


def test_detr_resize_without_cap_and_noop_when_short_side_matches():
    assert detr_resize_output_shape(300, 1000, 500, None) == (500, 1666)
    aug = DetrResizeShortestEdge([800], 1333, "choice")
    assert isinstance(aug.get_transform(np.zeros((800, 1000, 3), np.uint8)), NoOpTransform)
    tfm = aug.get_transform(np.zeros((480, 640, 3), np.uint8))
    assert (tfm.new_h, tfm.new_w) == (800, 1066)


@pytest.mark.parametrize("rounding, expected", [("truncate", (800, 1066)), ("round", (800, 1067))])
def test_test_augmentation_uses_min_size_test_and_rounding(rounding, expected):
    cfg = _cfg(RESIZE_ROUNDING=rounding, MIN_SIZE_TEST=800, MAX_SIZE_TEST=1333)
    shape, _ = _apply(build_detr_test_augmentation(cfg), 480, 640)
    assert shape == expected


def test_crop_branch_resize_crop_resize_with_sizes_in_range():
    cfg = _cfg(
        RANDOM_FLIP="none",
        MIN_SIZE_TRAIN=(64,),
        MAX_SIZE_TRAIN=1000,
        MIN_SIZE_TRAIN_SAMPLING="choice",
        CROP__ENABLED=True,
        CROP__TYPE="absolute_range",
        CROP__PROB=1.0,
        CROP__RESIZE_SHORT_EDGE=(100,),
        CROP__SIZE=(40, 60),
        RESIZE_ROUNDING="truncate",
    )
    np.random.seed(0)
    crop_sizes = set()
    for _ in range(30):
        shape, tfms = _apply(build_detr_train_augmentation(cfg), 80, 120)
        kinds = [type(t).__name__ for t in tfms.transforms]
        assert kinds == ["ResizeTransform", "CropTransform", "ResizeTransform"], kinds
        first, crop, last = tfms.transforms
        assert (first.new_h, first.new_w) == (100, 150)  # short side 100, no long-side cap
        assert 40 <= crop.h <= 60 and 40 <= crop.w <= 60
        assert crop.x0 + crop.w <= 150 and crop.y0 + crop.h <= 100
        assert min(shape) == 64
        crop_sizes.add((crop.h, crop.w))
    assert len(crop_sizes) > 10  # sizes are drawn, not fixed


def test_crop_branch_probability_and_flip():
    cfg = _cfg(
        MIN_SIZE_TRAIN=(64,),
        MAX_SIZE_TRAIN=1000,
        MIN_SIZE_TRAIN_SAMPLING="choice",
        CROP__ENABLED=True,
        CROP__TYPE="absolute_range",
        CROP__RESIZE_SHORT_EDGE=(100,),
        CROP__SIZE=(40, 60),
    )
    assert cfg.INPUT.CROP.PROB == 0.5 and cfg.INPUT.RANDOM_FLIP == "horizontal"
    augs = build_detr_train_augmentation(cfg)
    np.random.seed(1)
    n, crops, flips = 400, 0, 0
    for _ in range(n):
        _, tfms = _apply(augs, 80, 120)
        crops += any(isinstance(t, CropTransform) for t in tfms.transforms)
        flips += any(isinstance(t, HFlipTransform) for t in tfms.transforms)
    assert 0.4 < crops / n < 0.6 and 0.4 < flips / n < 0.6


def test_multiscale_range_sampling_and_disabled_crop():
    cfg = _cfg(
        RANDOM_FLIP="none",
        MIN_SIZE_TRAIN=(48, 80),
        MIN_SIZE_TRAIN_SAMPLING="range",
        MAX_SIZE_TRAIN=1000,
        CROP__ENABLED=False,
    )
    augs = build_detr_train_augmentation(cfg)
    assert len(augs) == 1
    np.random.seed(0)
    shorts = {min(_apply(augs, 100, 150)[0]) for _ in range(60)}
    assert min(shorts) >= 48 and max(shorts) <= 80 and len(shorts) > 15


def test_bad_config_values_raise():
    with pytest.raises(ValueError, match="RESIZE_ROUNDING"):
        build_detr_test_augmentation(_cfg(RESIZE_ROUNDING="nearest"))
    with pytest.raises(
        ValueError, match=r"INPUT.CROP.SIZE must be \(min, max\) with 0 < min <= max"
    ):
        build_detr_train_augmentation(
            _cfg(CROP__ENABLED=True, CROP__TYPE="absolute_range", CROP__SIZE=(700, 600))
        )


def test_detectron2_crop_types_are_honoured():
    """INPUT.CROP.TYPE/SIZE go to Detectron2's RandomCrop as they are (e.g. relative)."""
    cfg = _cfg(
        RANDOM_FLIP="none",
        MIN_SIZE_TRAIN=(64,),
        CROP__ENABLED=True,
        CROP__PROB=1.0,
        CROP__TYPE="relative",
        CROP__SIZE=(0.5, 0.5),
        CROP__RESIZE_SHORT_EDGE=(100,),
    )
    _, tfms = _apply(build_detr_train_augmentation(cfg), 80, 120)
    crop = [t for t in tfms.transforms if isinstance(t, CropTransform)][0]
    assert (crop.h, crop.w) == (50, 75)
