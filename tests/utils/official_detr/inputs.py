"""DETR's official evaluation input pipeline, re-implemented for the reference oracle.

Conventions (``datasets/coco.py`` and ``datasets/transforms.py``, facebookresearch/detr at 29901c5):
PIL decode to RGB without EXIF handling; shortest side 800, longest side capped at 1333 with the
long side *truncated* (``int``), not rounded; PIL bilinear on the uint8 image; ``[0, 1]`` floats
normalised with the ImageNet mean/std in **RGB** order, CHW; batches zero-padded at the bottom/right
to the largest H and W (no size divisibility) with a boolean mask that is True on padding.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torchvision.transforms.functional as TF
from PIL import Image

IMAGENET_MEAN_RGB: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB: Tuple[float, float, float] = (0.229, 0.224, 0.225)

__all__ = [
    "IMAGENET_MEAN_RGB",
    "IMAGENET_STD_RGB",
    "NestedTensor",
    "detr_resized_hw",
    "load_rgb_image",
    "nested_tensor_from_tensor_list",
    "official_eval_transform",
]


class NestedTensor:
    """A padded batch ``tensors`` (B, C, H, W) with its pixel ``mask`` (B, H, W), True = padding."""

    def __init__(self, tensors: torch.Tensor, mask: Optional[torch.Tensor]):
        self.tensors = tensors
        self.mask = mask

    def to(self, device: Union[str, torch.device]) -> "NestedTensor":
        mask = self.mask.to(device) if self.mask is not None else None
        return NestedTensor(self.tensors.to(device), mask)

    def decompose(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        return self.tensors, self.mask

    def __repr__(self) -> str:
        return f"NestedTensor(tensors={tuple(self.tensors.shape)}, mask={self.mask is not None})"


def nested_tensor_from_tensor_list(tensor_list: Sequence[torch.Tensor]) -> NestedTensor:
    """Zero-pad CHW images to the batch's largest H and W (bottom/right); mask True on padding."""
    if len(tensor_list) == 0 or any(t.ndim != 3 for t in tensor_list):
        raise ValueError("nested_tensor_from_tensor_list expects a non-empty list of CHW tensors")
    max_size = [max(sizes) for sizes in zip(*[list(t.shape) for t in tensor_list])]
    b = len(tensor_list)
    c, h, w = max_size
    first = tensor_list[0]
    tensor = torch.zeros((b, c, h, w), dtype=first.dtype, device=first.device)
    mask = torch.ones((b, h, w), dtype=torch.bool, device=first.device)
    for img, pad_img, m in zip(tensor_list, tensor, mask):
        pad_img[: img.shape[0], : img.shape[1], : img.shape[2]].copy_(img)
        m[: img.shape[1], : img.shape[2]] = False
    return NestedTensor(tensor, mask)


def detr_resized_hw(
    width: int, height: int, size: int = 800, max_size: Optional[int] = 1333
) -> Tuple[int, int]:
    """DETR's ``get_size_with_aspect_ratio``: the (height, width) an image of ``width`` x ``height``
    gets.

    If ``long / short * size > max_size`` the short target becomes ``round(max_size * short /
    long)`` (Python ``round``, halves to even); the long side is ``int(short_target * long /
    short)`` (truncated). An image whose short side already equals the target is returned unchanged.
    """
    w, h = width, height
    if max_size is not None:
        min_original_size = float(min((w, h)))
        max_original_size = float(max((w, h)))
        if max_original_size / min_original_size * size > max_size:
            size = int(round(max_size * min_original_size / max_original_size))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        ow = size
        oh = int(size * h / w)
    else:
        oh = size
        ow = int(size * w / h)
    return oh, ow


def load_rgb_image(path: str) -> Image.Image:
    """Decode an image file with PIL and convert it to RGB (no EXIF orientation, like DETR)."""
    with open(path, "rb") as f:
        img = Image.open(f)
        return img.convert("RGB")


def official_eval_transform(
    image: Image.Image, size: int = 800, max_size: Optional[int] = 1333
) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Resize (PIL bilinear, truncating rule) and normalise one RGB PIL image.

    Returns ``(tensor, (h, w))``: a float32 CHW tensor normalised in RGB order and its size, which
    is the post-processor's ``processed_size``.
    """
    if image.mode != "RGB":
        raise ValueError(
            f"official_eval_transform expects an RGB PIL image, got mode {image.mode!r}"
        )
    oh, ow = detr_resized_hw(image.width, image.height, size, max_size)
    if (oh, ow) != (image.height, image.width):
        image = TF.resize(image, [oh, ow])  # PIL bilinear on uint8, like torchvision on PIL input
    tensor = TF.normalize(TF.to_tensor(image), list(IMAGENET_MEAN_RGB), list(IMAGENET_STD_RGB))
    return tensor, (oh, ow)
