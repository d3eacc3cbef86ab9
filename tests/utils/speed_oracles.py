"""The computations ``DetrPanoptic`` ran before issue 25's speed changes, as test and benchmark
oracles (same model object, same parameters; only how it computes changes):

* attention: ``nn.MultiheadAttention`` called with ``need_weights=True`` (weights materialised and
  head-averaged, then dropped), as ``modeling/transformer.py`` did;
* backbone: each ``Conv2d`` + ``FrozenBatchNorm2d`` as two passes (Detectron2's own forward), in
  the contiguous (NCHW) memory format, as the mask head;
* mask loss: ``F.interpolate(..., mode="bilinear", align_corners=False)`` instead of
  ``criterion.upsample_bilinear``, and focal + dice through autograd of their formulas
  (:func:`focal_and_dice_composite`: torchvision's ``sigmoid_focal_loss`` and DETR's
  ``dice_loss``) instead of ``mask_losses.sigmoid_focal_dice_loss``;
* mask head: ReLU and the feature additions out of place (:func:`mask_head_out_of_place`); in
  training, run image by image (:func:`query_masks_per_image`) instead of all images in one batch
  (``compute_query_masks_on_batch_grid``);
* duplicate suppression: the queries near a target box found image by image
  (:func:`near_target_per_image`) instead of in one ``box_iou`` over the batch.

``with old_computation(model): ...`` switches all of them for this model only (other models in the
process keep the new computation, so benchmarks can interleave both) and restores them on exit.
"""

import functools
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d
from torch import Tensor, nn
from torchvision.ops import box_convert, box_iou, sigmoid_focal_loss

from detr_d2.modeling import criterion as criterion_module
from detr_d2.modeling import meta_arch as meta_arch_module
from detr_d2.modeling.backbone_speed import FrozenBNFoldedConv2d, use_channels_last
from detr_d2.modeling.criterion import SetCriterion
from detr_d2.modeling.mask_head import MaskHeadSmallConv
from detr_d2.modeling.query_masks import compute_query_masks


def interpolate_bilinear(x: Tensor, size: Tuple[int, int]) -> Tensor:
    """The old mask-loss upsampling: ``x`` (N, h, w) -> (N, H, W)."""
    return F.interpolate(x[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def focal_and_dice_composite(
    logits: Tensor, targets: Tensor, num_boxes: float, alpha: float = 0.25, gamma: float = 2.0
) -> Tuple[Tensor, Tensor]:
    """The old mask losses (``criterion.focal_loss`` / ``criterion.dice_loss`` before issue 25,
    verbatim), with the signature of ``mask_losses.sigmoid_focal_dice_loss``: ``logits`` (N, P),
    ``targets`` (N, P) bool."""
    targets = targets.float()
    focal = (
        sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none")
        .mean(1)
        .sum()
        / num_boxes
    )
    inputs = logits.sigmoid()
    numerator = 2 * (inputs * targets).sum(1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    dice = (1 - (numerator + 1) / (denominator + 1)).sum() / num_boxes
    return focal, dice


def near_target_per_image(
    criterion: SetCriterion, pred_boxes: Tensor, targets: List[Dict[str, Tensor]]
) -> Tensor:
    """The old ``SetCriterion._near_target`` (verbatim): a ``box_iou`` per image."""
    near = torch.zeros(pred_boxes.shape[:2], dtype=torch.bool, device=pred_boxes.device)
    for i, t in enumerate(targets):
        if len(t["boxes"]):
            iou = box_iou(
                box_convert(pred_boxes[i].detach().float(), "cxcywh", "xyxy"),
                box_convert(t["boxes"].float(), "cxcywh", "xyxy"),
            )
            near[i] = iou.max(1).values >= criterion.duplicate_iou_threshold
    return near


def _attention_with_weights(module: nn.MultiheadAttention, *args, **kwargs):
    kwargs["need_weights"] = True
    return nn.MultiheadAttention.forward(module, *args, **kwargs)


def _loss_masks_interpolating(criterion: SetCriterion, *args, **kwargs):
    # swapped during this call only (the criterion's mask_fn runs inside it): other models in the
    # process keep the new computation
    new = (
        criterion_module.upsample_bilinear,
        criterion_module.sigmoid_focal_dice_loss,
        meta_arch_module.compute_query_masks_on_batch_grid,
    )
    criterion_module.upsample_bilinear = interpolate_bilinear
    criterion_module.sigmoid_focal_dice_loss = focal_and_dice_composite
    meta_arch_module.compute_query_masks_on_batch_grid = query_masks_per_image
    try:
        return SetCriterion.loss_masks(criterion, *args, **kwargs)
    finally:
        (
            criterion_module.upsample_bilinear,
            criterion_module.sigmoid_focal_dice_loss,
            meta_arch_module.compute_query_masks_on_batch_grid,
        ) = new


def mask_head_out_of_place(
    self: MaskHeadSmallConv,
    x: Tensor,
    bbox_mask: Tensor,
    fpns: List[Tensor],
    projected: Optional[Tensor] = None,
) -> Tensor:
    """``MaskHeadSmallConv.forward`` as it was before its ReLU / additions ran in place (verbatim,
    with ``_add_upsampled`` inlined as ``add_upsampled``)."""

    def add_upsampled(fpn: Tensor, x: Tensor, num_queries: int) -> Tensor:
        up = F.interpolate(x, size=fpn.shape[-2:], mode="nearest")
        up = up.view(fpn.shape[0], num_queries, *up.shape[1:]) + fpn.unsqueeze(1)
        return up.flatten(0, 1)

    num_queries = bbox_mask.shape[1]
    if projected is None:
        x = torch.cat([x.unsqueeze(1).expand(-1, num_queries, -1, -1, -1), bbox_mask], 2).flatten(
            0, 1
        )
        x = self.lay1(x)
    else:
        att = F.conv2d(
            bbox_mask.flatten(0, 1),
            self.lay1.weight[:, self.feature_channels :],
            None,
            padding=1,
        )
        x = (
            att.view(projected.shape[0], num_queries, *att.shape[1:]) + projected.unsqueeze(1)
        ).flatten(0, 1)
    x = F.relu(self.gn1(x))
    x = F.relu(self.gn2(self.lay2(x)))
    x = add_upsampled(self.adapter1(fpns[0]), x, num_queries)
    x = F.relu(self.gn3(self.lay3(x)))
    x = add_upsampled(self.adapter2(fpns[1]), x, num_queries)
    x = F.relu(self.gn4(self.lay4(x)))
    x = add_upsampled(self.adapter3(fpns[2]), x, num_queries)
    x = F.relu(self.gn5(self.lay5(x)))
    return self.out_lay(x)


def query_masks_per_image(
    bbox_attention: nn.Module, mask_head: nn.Module, state, queries, feature_norm: bool
) -> List[Tensor]:
    """The criterion's masks image by image (``compute_query_masks(..., crop_to_image=False)``),
    as before ``compute_query_masks_on_batch_grid`` (same signature)."""
    return compute_query_masks(bbox_attention, mask_head, state, queries, (), False, feature_norm)


@contextmanager
def old_computation(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` (a ``DetrPanoptic``, or any module holding its parts) the old way inside the
    block."""
    attention = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    folded = [m for m in model.modules() if type(m) is FrozenBNFoldedConv2d]
    backbone = getattr(model, "backbone", None)
    for m in attention:
        m.forward = functools.partial(_attention_with_weights, m)
    for m in folded:
        m.__class__ = Conv2d
    mask_head = getattr(model, "mask_head", None)
    for m in (backbone, mask_head):
        if m is not None:
            m.to(memory_format=torch.contiguous_format)
    if mask_head is not None:
        mask_head.forward = functools.partial(mask_head_out_of_place, mask_head)
    criteria = [m for m in model.modules() if isinstance(m, SetCriterion)]
    for c in criteria:
        c.loss_masks = functools.partial(_loss_masks_interpolating, c)
        c._near_target = functools.partial(near_target_per_image, c)
    try:
        yield model
    finally:
        for c in criteria:
            del c.loss_masks
            del c._near_target
        if mask_head is not None:
            del mask_head.forward
        for m in (backbone, mask_head):
            if m is not None:
                use_channels_last(m)
        for m in folded:
            m.__class__ = FrozenBNFoldedConv2d
        for m in attention:
            del m.forward
