"""Batch invariance: an image gives the same outputs alone and in a padded batch.

DETR pads each batch to its largest image; the backbone's features near an image's bottom/right
border then see the padded region (non-zero after BatchNorm shifts), so the same image gives
different outputs alone and in a batch (DETR's published numbers are single-image). With
:class:`BatchInvariantBackbone` attached, every convolution output (and the stem output) is zeroed
outside the image's own region, which is exactly what the convolutions' zero padding shows them when
the image is alone; feature-level masks cover the first ``ceil(h / stride)`` x ``ceil(w / stride)``
cells (:func:`ceil_padding_mask`), and the model runs the mask head on each image's own region at
inference. Batched outputs then equal the single-image ones up to float rounding. Batches without
padding are untouched.
"""

import math
from contextlib import contextmanager
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BatchInvariantBackbone", "ceil_padding_mask", "resize_padding_mask"]


class BatchInvariantBackbone:
    """Forward hooks that zero the padded region of conv/stem outputs while
    ``active(image_sizes)``."""

    def __init__(self, backbone: nn.Module):
        self._sizes: Optional[List[Tuple[int, int]]] = None
        self._batch_hw: Tuple[int, int] = (0, 0)
        self._cache = {}
        self.handles = []
        for module in backbone.modules():
            if isinstance(module, nn.Conv2d) or type(module).__name__.endswith("Stem"):
                self.handles.append(module.register_forward_hook(self._hook))

    @staticmethod
    def _valid(n_img: int, n_batch: int, n_out: int) -> int:
        # cumulative stride of this output (a power of 2); every stride-2 layer maps n -> ceil(n /
        # 2)
        stride = 2 ** max(0, round(math.log2(max(n_batch, 1) / max(n_out, 1))))
        return min(n_out, -(-n_img // stride))

    def _mask(self, out: Tensor) -> Tensor:
        key = (out.shape[-2], out.shape[-1], out.device, out.dtype)
        m = self._cache.get(key)
        if m is None:
            m = torch.zeros(
                (len(self._sizes), 1, out.shape[-2], out.shape[-1]),
                device=out.device,
                dtype=out.dtype,
            )
            for i, (h, w) in enumerate(self._sizes):
                vh = self._valid(h, self._batch_hw[0], out.shape[-2])
                vw = self._valid(w, self._batch_hw[1], out.shape[-1])
                m[i, :, :vh, :vw] = 1
            self._cache[key] = m
        return m

    def _hook(self, module, inputs, out):
        if self._sizes is None or not isinstance(out, Tensor) or out.dim() != 4:
            return None
        return out * self._mask(out)

    @contextmanager
    def active(self, image_sizes: List[Tuple[int, int]], batch_hw: Tuple[int, int]):
        """Within the block, backbone forwards zero padded regions (no-op when nothing is
        padded)."""
        padded = any((h, w) != tuple(batch_hw) for h, w in image_sizes)
        self._sizes = [tuple(s) for s in image_sizes] if padded else None
        self._batch_hw = tuple(batch_hw)
        self._cache = {}
        try:
            yield
        finally:
            self._sizes = None
            self._cache = {}


def ceil_padding_mask(
    sizes: Sequence[Tuple[int, int]], hw: Sequence[int], stride: int, device=None
) -> Tensor:
    """(B, H, W) bool mask of a feature map of size ``hw``, False on the first ceil(h/stride) rows
    and ceil(w/stride) columns of each image (its own cells), True elsewhere (padding)."""
    mask = torch.ones((len(sizes), hw[0], hw[1]), dtype=torch.bool, device=device)
    for i, (h, w) in enumerate(sizes):
        mask[i, : -(-h // stride), : -(-w // stride)] = False
    return mask


def resize_padding_mask(pixel_mask: Tensor, hw: Sequence[int]) -> Tensor:
    """The (B, H, W) pixel padding mask (True = pad) resized to ``hw`` with legacy nearest (as
    DETR)."""
    return F.interpolate(pixel_mask[None].float(), size=tuple(hw)).to(torch.bool)[0]
