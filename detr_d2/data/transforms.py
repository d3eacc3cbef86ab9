"""DETR's augmentations as Detectron2 ``Augmentation`` lists.

Train (``cfg.INPUT``): horizontal flip (``RANDOM_FLIP``); then, when Detectron2's
``CROP.ENABLED``, with probability ``CROP.PROB``: resize the short side to one of
``CROP.RESIZE_SHORT_EDGE`` (no long-side cap) and take Detectron2's ``RandomCrop(CROP.TYPE,
CROP.SIZE)`` (DETR: ``absolute_range`` 384..600, height and width each drawn in the range and
clipped to the image); finally always the multi-scale resize (short side from ``MIN_SIZE_TRAIN`` per
``MIN_SIZE_TRAIN_SAMPLING``, long side <= ``MAX_SIZE_TRAIN``). Test: resize to ``MIN_SIZE_TEST`` /
``MAX_SIZE_TEST``.

``INPUT.RESIZE_ROUNDING``: "round" uses Detectron2's output size (long side rounded;
:class:`RoundedResizeShortestEdge`); "truncate" uses :class:`DetrResizeShortestEdge`, whose output
size is DETR's exactly (long side truncated; see :func:`detr_resize_output_shape`). Both return a
``NoOpTransform`` where the size does not change.

Follows ``RandomResize`` / ``RandomSizeCrop`` in ``datasets/transforms.py`` (facebookresearch/detr
at 29901c5).
"""

import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from fvcore.transforms.transform import NoOpTransform
from PIL import Image

__all__ = [
    "detr_resize_output_shape",
    "DetrResizeShortestEdge",
    "RoundedResizeShortestEdge",
    "build_resize",
    "build_detr_train_augmentation",
    "build_detr_test_augmentation",
]


def detr_resize_output_shape(
    h: int, w: int, short_edge_length: int, max_size: Optional[int]
) -> Tuple[int, int]:
    """Output (h, w) of DETR's ``resize(image, size, max_size)`` (``datasets/transforms.py``).

    If ``long / short * size > max_size`` the short target becomes
    ``round(max_size * short / long)`` (Python round); the short side is set to the target and
    the long side to ``int(target * long / short)`` (truncated, unlike Detectron2's rounding).
    """
    size = short_edge_length
    if max_size is not None:
        min_original, max_original = float(min(w, h)), float(max(w, h))
        if max_original / min_original * size > max_size:
            size = int(round(max_size * min_original / max_original))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


class DetrResizeShortestEdge(T.ResizeShortestEdge):
    """``ResizeShortestEdge`` with DETR's output size (:func:`detr_resize_output_shape`).

    Same arguments and sampling as Detectron2's; ``max_size=sys.maxsize`` means no cap. When the
    size does not change, the transform is a no-op (as in DETR).
    """

    def get_transform(self, image: np.ndarray):
        h, w = image.shape[:2]
        if self.is_range:
            size = np.random.randint(self.short_edge_length[0], self.short_edge_length[1] + 1)
        else:
            size = np.random.choice(self.short_edge_length)
        if size == 0:
            return NoOpTransform()
        max_size = None if self.max_size >= sys.maxsize else self.max_size
        newh, neww = detr_resize_output_shape(h, w, int(size), max_size)
        if (newh, neww) == (h, w):
            return NoOpTransform()
        return T.ResizeTransform(h, w, newh, neww, self.interp)


class RoundedResizeShortestEdge(T.ResizeShortestEdge):
    """Detectron2's ``ResizeShortestEdge`` (same arguments, random draws and output size), with a
    ``NoOpTransform`` where the size does not change.

    Detectron2 returns a same-size ``ResizeTransform`` there, whose ``apply_image`` round-trips a
    ``uint8`` image through PIL, and PIL's ``resize`` to the image's own size returns a copy: the
    no-op gives the same pixels, segmentation and boxes without the two copies (0.3 ms of the 1.3 ms
    mapping of a quickstart image, whose 128x128 images all keep their size; docs/speed.md).
    """

    def get_transform(self, image: np.ndarray):
        transform = super().get_transform(image)
        if isinstance(transform, T.ResizeTransform) and (transform.new_h, transform.new_w) == (
            transform.h,
            transform.w,
        ):
            return NoOpTransform()
        return transform


def build_resize(
    rounding: str,
    short_edge_length: Sequence[int],
    max_size: int = sys.maxsize,
    sample_style: str = "choice",
) -> T.Augmentation:
    """A shortest-edge resize whose long side is rounded (Detectron2, "round") or truncated (DETR,
    "truncate")."""
    if rounding == "round":
        return RoundedResizeShortestEdge(short_edge_length, max_size, sample_style, Image.BILINEAR)
    if rounding == "truncate":
        return DetrResizeShortestEdge(short_edge_length, max_size, sample_style, Image.BILINEAR)
    raise ValueError(f"INPUT.RESIZE_ROUNDING must be 'round' or 'truncate', got {rounding!r}")


def _flip(cfg: CfgNode) -> List[T.Augmentation]:
    if cfg.INPUT.RANDOM_FLIP == "none":
        return []
    if cfg.INPUT.RANDOM_FLIP not in ("horizontal", "vertical"):
        raise ValueError(
            f"INPUT.RANDOM_FLIP must be horizontal/vertical/none, got {cfg.INPUT.RANDOM_FLIP!r}"
        )
    return [
        T.RandomFlip(
            horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
            vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
        )
    ]


def build_detr_train_augmentation(cfg: CfgNode) -> List[T.Augmentation]:
    """DETR's training augmentation (see module docstring) from ``cfg.INPUT``."""
    rounding = cfg.INPUT.RESIZE_ROUNDING
    augs = _flip(cfg)
    crop = cfg.INPUT.CROP
    if crop.ENABLED and crop.PROB > 0:
        if crop.TYPE == "absolute_range" and not 0 < crop.SIZE[0] <= crop.SIZE[1]:
            raise ValueError(
                f"INPUT.CROP.SIZE must be (min, max) with 0 < min <= max, got {tuple(crop.SIZE)}"
            )
        crop_branch = T.AugmentationList(
            [
                build_resize(rounding, list(crop.RESIZE_SHORT_EDGE), sys.maxsize, "choice"),
                T.RandomCrop(crop.TYPE, tuple(crop.SIZE)),
            ]
        )
        augs.append(T.RandomApply(crop_branch, prob=crop.PROB))
    augs.append(
        build_resize(
            rounding,
            list(cfg.INPUT.MIN_SIZE_TRAIN),
            cfg.INPUT.MAX_SIZE_TRAIN,
            cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
        )
    )
    return augs


def build_detr_test_augmentation(cfg: CfgNode) -> List[T.Augmentation]:
    """Test-time resize (``MIN_SIZE_TEST``, ``MAX_SIZE_TEST``) with ``INPUT.RESIZE_ROUNDING``."""
    return [
        build_resize(
            cfg.INPUT.RESIZE_ROUNDING, [cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST, "choice"
        )
    ]
