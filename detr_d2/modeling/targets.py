"""Training targets in DETR's format from Detectron2's ``instances`` (``gt_classes`` contiguous
ids, ``gt_boxes`` XYXY pixels of the input image, ``gt_masks``, optional ``gt_is_crowd``). Follows
DETR's ``d2/detr/detr.py`` ``prepare_targets`` (facebookresearch/detr at 29901c5) and Mask2Former's
``MaskFormer.prepare_targets``."""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.structures import BitMasks, Instances, PolygonMasks
from torch import Tensor
from torchvision.ops import box_convert

__all__ = ["contiguous_to_slot", "prepare_targets"]


def prepare_targets(
    batched_inputs: List[Dict],
    image_sizes: Sequence[Tuple[int, int]],
    num_classes: int,
    contiguous_to_slot: Optional[Tensor],
    mask_on: bool,
    device: torch.device,
) -> List[Dict[str, Tensor]]:
    """One dict per image: ``labels`` (N,) class slots (contiguous ids through
    ``contiguous_to_slot`` when slots are dataset ids), ``boxes`` (N, 4) cxcywh relative to the
    image's own (h, w) of ``image_sizes``, and with ``mask_on`` ``masks`` (N, h, w) bool. Crowd
    segments (``gt_is_crowd``) are dropped: they are never matched as positives. Contiguous ids
    must lie in 0..num_classes-1."""
    targets = []
    for i, (x, (h, w)) in enumerate(zip(batched_inputs, image_sizes)):
        inst: Optional[Instances] = x.get("instances")
        if inst is None:
            raise ValueError(
                f"batched_inputs[{i}] has no 'instances' (training needs a mapper that adds them)"
            )
        inst = inst.to(device)
        if inst.has("gt_is_crowd") and len(inst):
            inst = inst[~inst.gt_is_crowd.bool()]
        classes = inst.gt_classes.long()
        if len(classes) and (classes.min() < 0 or classes.max() >= num_classes):
            raise ValueError(
                f"batched_inputs[{i}] ({x.get('file_name', '?')}): gt_classes "
                f"{classes.tolist()} outside 0..{num_classes - 1}; MODEL.DETR.NUM_CLASSES / "
                "dataset metadata mismatch"
            )
        if contiguous_to_slot is not None:
            classes = contiguous_to_slot[classes]
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=device)
        boxes = (
            box_convert(inst.gt_boxes.tensor.float() / scale, "xyxy", "cxcywh")
            if len(inst)
            else torch.zeros((0, 4), device=device)
        )
        t = {"labels": classes, "boxes": boxes}
        if mask_on:
            if not inst.has("gt_masks"):
                raise ValueError(
                    f"batched_inputs[{i}]: instances have no gt_masks but MODEL.MASK_ON is True"
                )
            gm = inst.gt_masks
            if isinstance(gm, PolygonMasks):
                gm = BitMasks.from_polygon_masks(gm, h, w)
            t["masks"] = gm.tensor if isinstance(gm, BitMasks) else gm
            if len(inst) == 0:
                t["masks"] = torch.zeros((0, h, w), dtype=torch.bool, device=device)
        targets.append(t)
    return targets


def contiguous_to_slot(label_map: Optional[Tensor], num_classes: int) -> Optional[Tensor]:
    """(C,) int64 contiguous id -> class slot, the inverse of ``label_map`` (S,) slot -> contiguous
    id (-1: unused slot); None when slots are contiguous ids (``label_map`` None)."""
    if label_map is None:
        return None
    table = torch.full((num_classes,), -1, dtype=torch.int64)
    valid = label_map >= 0
    table[label_map[valid]] = valid.nonzero().flatten()
    return table
