"""``panoptic_to_instances`` (issue 25: all segments' masks in one broadcast comparison, boxes in
one pass) gives exactly the targets of the old per-segment loop with Detectron2's
``BitMasks.get_bounding_boxes`` (``tests.utils.mapper_oracles``): random id maps of every integer
dtype, segments cropped away, crowd flags, no segment, ids beyond the map's dtype; and the whole
training mapper on the COCO sample with DETR's default augmentation (flip, crop, resize)."""

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

from detr_d2 import add_detr_config
from detr_d2.data import DetrPanopticDatasetMapper
from detr_d2.data.dataset_mappers.detr_panoptic_dataset_mapper import panoptic_to_instances
from tests.utils.evaluation import register_coco_sample
from tests.utils.mapper_oracles import (
    instances_differences,
    old_mapper_computation,
    panoptic_to_instances_per_segment,
)


def _old(ids, info):
    return panoptic_to_instances_per_segment(ids, info, ids.shape)


def _random_case(seed):
    """(ids (H, W), segments_info): some listed segments have no pixel (cropped away), some
    pixels are void, ids anywhere in 1..2^24 - 1 (COCO's RGB range)."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 12))
    seg_ids = rng.choice(np.arange(1, 2**24), size=k, replace=False)
    shown = seg_ids[: max(1, k - int(rng.integers(0, 3)))]  # the rest cropped away
    palette = np.concatenate([[0], shown])
    h, w = int(rng.integers(1, 50)), int(rng.integers(1, 50))
    ids = palette[rng.integers(0, len(palette), size=(h, w))]
    info = [
        {"id": int(i), "category_id": int(rng.integers(0, 200)), "iscrowd": int(rng.integers(0, 2))}
        for i in rng.permutation(seg_ids)
    ]
    if seed % 3 == 0:  # iscrowd is optional
        for s in info:
            del s["iscrowd"]
    return ids, info


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.int64])
@pytest.mark.parametrize("seed", range(12))
def test_targets_equal_the_per_segment_loop(seed, dtype):
    ids, info = _random_case(seed)
    ids = ids.astype(dtype)
    new = panoptic_to_instances(ids, info, ids.shape)
    assert instances_differences(new, _old(ids, info)) == []


def test_single_pixel_and_full_image_segments():
    ids = np.full((7, 9), 5, np.int32)
    ids[3, 8] = 9  # a one-pixel segment in the last column
    ids[0, 0] = 0
    info = [{"id": 9, "category_id": 1}, {"id": 5, "category_id": 2, "iscrowd": 1}]
    new = panoptic_to_instances(ids, info, ids.shape)
    assert new.gt_boxes.tensor.tolist() == [[8, 3, 9, 4], [0, 0, 9, 7]]
    assert instances_differences(new, _old(ids, info)) == []


def test_no_segment_and_ids_beyond_the_dtype_of_the_map():
    ids = np.zeros((4, 6), np.uint8)
    for info in ([], [{"id": 300, "category_id": 1}]):  # 300 does not fit uint8: no pixel
        new = panoptic_to_instances(ids, info, ids.shape)
        assert len(new) == 0 and new.gt_masks.tensor.shape == (0, 4, 6)
        assert instances_differences(new, _old(ids, info)) == []
    ids[1:3, 2:5] = 200
    info = [{"id": 200, "category_id": 3}, {"id": 456, "category_id": 1}]
    new = panoptic_to_instances(ids, info, ids.shape)
    assert new.gt_boxes.tensor.tolist() == [[2, 1, 5, 3]]
    assert instances_differences(new, _old(ids, info)) == []


def test_training_mapper_on_the_coco_sample_equals_the_old_computation():
    dicts = DatasetCatalog.get(register_coco_sample())
    cfg = get_cfg()
    add_detr_config(cfg)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (200, 264), 400
    cfg.INPUT.CROP.ENABLED, cfg.INPUT.CROP.TYPE = True, "absolute_range"
    cfg.INPUT.CROP.RESIZE_SHORT_EDGE, cfg.INPUT.CROP.SIZE = (300,), (100, 200)
    mapper = DetrPanopticDatasetMapper(cfg, is_train=True)
    for seed in range(6):
        for d in dicts:
            np.random.seed(seed)
            new = mapper(d)
            np.random.seed(seed)
            with old_mapper_computation():
                old = mapper(d)
            assert torch.equal(new["image"], old["image"])
            assert instances_differences(new["instances"], old["instances"]) == []
