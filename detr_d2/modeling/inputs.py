"""Model inputs: Detectron2's ``batched_inputs`` (dicts with ``image`` (C, H, W) uint8/float in
``INPUT.FORMAT`` order, optional ``height``/``width``: the output size) checked, normalised and
padded into one batch with its padding mask (DETR's ``NestedTensor``, ``util/misc.py``
``nested_tensor_from_tensor_list`` at facebookresearch/detr 29901c5; padding as Detectron2's
``ImageList.from_tensors``)."""

from typing import Dict, List, Tuple

import torch
from detectron2.structures import ImageList
from torch import Tensor

__all__ = ["preprocess_image"]


def _check_image(img: object, i: int, channels: int) -> Tensor:
    """``batched_inputs[i]['image']``: a (channels, H, W) tensor with H, W >= 1, else a ValueError
    naming it."""
    if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != channels:
        got = type(img).__name__ + ("" if not isinstance(img, Tensor) else str(tuple(img.shape)))
        raise ValueError(
            f"batched_inputs[{i}]['image'] must be a ({channels}, H, W) tensor, got {got}"
        )
    if img.shape[-1] < 1 or img.shape[-2] < 1:
        raise ValueError(f"batched_inputs[{i}]['image'] is empty: shape {tuple(img.shape)}")
    return img


def preprocess_image(
    batched_inputs: List[Dict], pixel_mean: Tensor, pixel_std: Tensor
) -> Tuple[ImageList, Tensor]:
    """Normalise each ``image`` ((C, H, W), on ``pixel_mean``'s device) with ``pixel_mean`` /
    ``pixel_std`` (C, 1, 1), pad bottom/right with zeros (in normalised space) to the batch's max
    size, and build the (B, H, W) padding mask (True on padded pixels)."""
    device, channels = pixel_mean.device, pixel_mean.shape[0]
    images = [
        (_check_image(x.get("image"), i, channels).to(device).float() - pixel_mean) / pixel_std
        for i, x in enumerate(batched_inputs)
    ]
    images = ImageList.from_tensors(images, size_divisibility=0)
    b, _, hp, wp = images.tensor.shape
    mask = torch.ones((b, hp, wp), dtype=torch.bool, device=device)
    for i, (h, w) in enumerate(images.image_sizes):
        mask[i, :h, :w] = False
    return images, mask
