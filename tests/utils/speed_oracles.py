"""The computations ``DetrPanoptic`` ran before issue 25's speed changes, as test and benchmark
oracles (same model object, same parameters; only how it computes changes):

* attention: ``nn.MultiheadAttention`` called with ``need_weights=True`` (weights materialised and
  head-averaged, then dropped), as ``modeling/transformer.py`` did;
* backbone: each ``Conv2d`` + ``FrozenBatchNorm2d`` as two passes (Detectron2's own forward), in
  the contiguous (NCHW) memory format, as the mask head;
* mask loss: ``F.interpolate(..., mode="bilinear", align_corners=False)`` instead of
  ``criterion.upsample_bilinear``.

``with old_computation(model): ...`` switches all of them for this model only (other models in the
process keep the new computation, so benchmarks can interleave both) and restores them on exit.
"""

import functools
from contextlib import contextmanager
from typing import Iterator, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d
from torch import Tensor, nn

from detr_d2.modeling import criterion as criterion_module
from detr_d2.modeling.backbone_speed import FrozenBNFoldedConv2d, use_channels_last
from detr_d2.modeling.criterion import SetCriterion


def interpolate_bilinear(x: Tensor, size: Tuple[int, int]) -> Tensor:
    """The old mask-loss upsampling: ``x`` (N, h, w) -> (N, H, W)."""
    return F.interpolate(x[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def _attention_with_weights(module: nn.MultiheadAttention, *args, **kwargs):
    kwargs["need_weights"] = True
    return nn.MultiheadAttention.forward(module, *args, **kwargs)


def _loss_masks_interpolating(criterion: SetCriterion, *args, **kwargs):
    new = criterion_module.upsample_bilinear  # swapped during this call only: other models in the
    criterion_module.upsample_bilinear = interpolate_bilinear  # process keep the new computation
    try:
        return SetCriterion.loss_masks(criterion, *args, **kwargs)
    finally:
        criterion_module.upsample_bilinear = new


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
    criteria = [m for m in model.modules() if isinstance(m, SetCriterion)]
    for c in criteria:
        c.loss_masks = functools.partial(_loss_masks_interpolating, c)
    try:
        yield model
    finally:
        for c in criteria:
            del c.loss_masks
        for m in (backbone, mask_head):
            if m is not None:
                use_channels_last(m)
        for m in folded:
            m.__class__ = FrozenBNFoldedConv2d
        for m in attention:
            del m.forward
