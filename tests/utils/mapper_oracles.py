"""The training mapper's computations before issue 25, as test and benchmark oracles:

* the integrity check of the panoptic PNG sorted every pixel: ``check_segment_ids(np.unique(ids),
  ...)`` (now ``check_segment_ids_of_map``);
* the targets came from a loop over the segments, one mask at a time, stacked, with boxes from
  Detectron2's ``BitMasks.get_bounding_boxes`` (now one broadcast comparison and one pass for the
  boxes in ``panoptic_to_instances``).

* a resize that keeps the size (``INPUT.RESIZE_ROUNDING "round"``) was Detectron2's same-size
  ``ResizeTransform`` (now a ``NoOpTransform``, :class:`RoundedResizeShortestEdge`).

``with old_mapper_computation(): ...`` makes ``DetrPanopticDatasetMapper`` run all three as before
(in this process; ``check=False`` / ``targets=False`` / ``resize=False``: not that one) and restores
the new ones on exit. :func:`instances_differences` compares the targets of both.
"""

from contextlib import contextmanager
from typing import Any, Dict, Iterator, List

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, Instances

from detr_d2.data.dataset_mappers import detr_panoptic_dataset_mapper as mapper_module
from detr_d2.data.panoptic_io import check_segment_ids
from detr_d2.data.transforms import RoundedResizeShortestEdge


def check_segment_ids_sorting(ids: np.ndarray, segments_info, *args) -> None:
    """The old integrity check: the PNG's ids from a sort of all its pixels."""
    check_segment_ids(np.unique(ids), segments_info, *args)


def panoptic_to_instances_per_segment(
    ids: np.ndarray, segments_info: List[Dict[str, Any]], image_size: tuple
) -> Instances:
    """The old ``panoptic_to_instances``, verbatim (detr_d2 before issue 25)."""
    classes, masks, crowd = [], [], []
    for seg in segments_info:
        mask = ids == seg["id"]
        if not mask.any():  # cropped away
            continue
        classes.append(int(seg["category_id"]))
        masks.append(mask)
        crowd.append(bool(seg.get("iscrowd", 0)))
    h, w = image_size
    instances = Instances((h, w))
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
    if masks:
        bitmasks = BitMasks(torch.from_numpy(np.stack(masks)))
    else:
        bitmasks = BitMasks(torch.zeros((0, h, w), dtype=torch.bool))
    instances.gt_masks = bitmasks
    instances.gt_boxes = Boxes(bitmasks.get_bounding_boxes().tensor)
    instances.gt_is_crowd = torch.tensor(crowd, dtype=torch.bool)
    return instances


def instances_differences(new: Instances, old: Instances) -> List[str]:
    """What differs between two mapper targets: ``"image_size"``, ``"fields"`` (other names) or the
    names of the fields whose dtype, shape or values differ (empty: identical)."""
    if new.image_size != old.image_size:
        return ["image_size"]
    if set(new.get_fields()) != set(old.get_fields()):
        return ["fields"]
    differ = []
    for name in sorted(new.get_fields()):
        a, b = new.get(name), old.get(name)
        a, b = getattr(a, "tensor", a), getattr(b, "tensor", b)  # BitMasks, Boxes
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            differ.append(name)
    return differ


@contextmanager
def old_mapper_computation(
    check: bool = True, targets: bool = True, resize: bool = True
) -> Iterator[None]:
    """``DetrPanopticDatasetMapper`` with the old check (``check``), the old targets (``targets``)
    and Detectron2's same-size resize (``resize``; every ``RoundedResizeShortestEdge``, also those
    built before the block) inside the block."""
    saved = mapper_module.check_segment_ids_of_map, mapper_module.panoptic_to_instances
    saved_resize = RoundedResizeShortestEdge.get_transform
    if check:
        mapper_module.check_segment_ids_of_map = check_segment_ids_sorting
    if targets:
        mapper_module.panoptic_to_instances = panoptic_to_instances_per_segment
    if resize:
        RoundedResizeShortestEdge.get_transform = T.ResizeShortestEdge.get_transform
    try:
        yield
    finally:
        mapper_module.check_segment_ids_of_map, mapper_module.panoptic_to_instances = saved
        RoundedResizeShortestEdge.get_transform = saved_resize
