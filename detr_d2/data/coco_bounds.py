"""Bounds on COCO image sizes and segmentations, checked before pycocotools' C code sees them.

pycocotools trusts its input: a polygon coordinate of 1e9 (or 1e30) makes ``frPyObjects``
segfault, a coordinate of -1e9 makes it run for minutes, an uncompressed RLE whose counts add up
to more than ``height * width`` (or a compressed one that decodes so) makes ``decode`` write past
its buffer, and a huge ``height``/``width`` asks for that many bytes. A crash kills the process
with no message and leaves its temporary outputs behind. These checks raise a ``ValueError``
naming the entry instead:

* ``height`` and ``width`` are positive integers with ``height * width`` at most
  :data:`MAX_PIXELS` (twice ``PIL.Image.MAX_IMAGE_PIXELS``, where PIL itself refuses an image as a
  decompression bomb);
* polygon coordinates are finite and within one image size outside the image
  (``-width <= x <= 2 * width``, same for ``y``): COCO polygons overshoot by a few pixels at most;
* RLE counts are non-negative and add up to exactly ``height * width`` (compressed strings are
  decoded here, as pycocotools' ``rleFrString`` does, to check them).
"""

import math
import numbers
from typing import Any, List, Mapping, Tuple

from PIL import Image

__all__ = ["MAX_PIXELS", "check_image_size", "check_segmentation", "rle_string_counts"]

MAX_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 89478485)


def check_image_size(height: Any, width: Any, where: str) -> Tuple[int, int]:
    """``(height, width)`` as ints, or ``ValueError`` naming ``where`` if they are not positive
    integers or the image would have more than :data:`MAX_PIXELS` pixels."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise ValueError(f"{where}: '{name}' must be a positive integer, got {value!r}")
    if int(height) * int(width) > MAX_PIXELS:
        raise ValueError(
            f"{where}: image size {width}x{height} (WxH) is {int(height) * int(width)} pixels, "
            f"more than the {MAX_PIXELS} PIL accepts (2 x PIL.Image.MAX_IMAGE_PIXELS); "
            "'height'/'width' are probably wrong"
        )
    return int(height), int(width)


def _check_polygon(poly: Any, height: int, width: int, where: str) -> None:
    if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
        raise ValueError(
            f"{where}: 'segmentation' polygons must be lists of >= 3 (x, y) points, got "
            f"{str(poly)[:80]}"
        )
    for k, value in enumerate(poly):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{where}: polygon coordinate {k} is {value!r}, not a number")
        size = width if k % 2 == 0 else height
        if not math.isfinite(value) or not -size <= value <= 2 * size:
            axis = "x" if k % 2 == 0 else "y"
            raise ValueError(
                f"{where}: polygon coordinate {k} ({axis} = {value!r}) is outside "
                f"[-{size}, {2 * size}] for an image of {width}x{height} (WxH); pycocotools would "
                "crash or run for ever on it"
            )


def rle_string_counts(counts: bytes, where: str) -> List[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString`` in Python:
    5-bit groups, ``0x20`` = more follows, ``0x10`` = sign, runs after the second are deltas)."""
    out: List[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts) or k > 12:
                raise ValueError(f"{where}: RLE 'counts' string is truncated or malformed")
            c = counts[p] - 48
            if not 0 <= c < 64:
                raise ValueError(
                    f"{where}: RLE 'counts' has the invalid character {chr(counts[p])!r}"
                )
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def _check_rle(segm: Mapping[str, Any], height: int, width: int, where: str) -> None:
    counts = segm["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii", errors="replace")
    if isinstance(counts, bytes):
        runs = rle_string_counts(counts, where)
    elif isinstance(counts, list):
        if any(isinstance(c, bool) or not isinstance(c, numbers.Integral) for c in counts):
            raise ValueError(f"{where}: RLE 'counts' must be integers")
        runs = [int(c) for c in counts]
    else:
        raise ValueError(f"{where}: RLE 'counts' must be a list or a string")
    if any(c < 0 for c in runs) or sum(runs) != height * width:
        raise ValueError(
            f"{where}: RLE 'counts' cover {sum(runs)} pixels (smallest run {min(runs, default=0)})"
            f", but the image has {height}x{width} = {height * width}; the mask does not belong "
            "to this image"
        )


def check_segmentation(segm: Any, height: int, width: int, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` unless ``segm`` (a COCO ``segmentation``: polygon
    list, or RLE dict with ``counts`` and ``size``) is safe to give pycocotools for an image of
    ``height`` x ``width`` (see the module docstring)."""
    if isinstance(segm, list):
        if not segm:
            raise ValueError(f"{where}: 'segmentation' is an empty polygon list")
        for poly in segm:
            _check_polygon(poly, height, width, where)
    elif isinstance(segm, Mapping) and "counts" in segm and "size" in segm:
        if list(segm["size"]) != [height, width]:
            raise ValueError(
                f"{where}: RLE 'size' {segm['size']} differs from the image's [height, width] "
                f"[{height}, {width}]"
            )
        _check_rle(segm, height, width, where)
    else:
        raise ValueError(
            f"{where}: 'segmentation' must be a polygon list or an RLE dict with 'counts' and "
            f"'size', got {type(segm).__name__}"
        )
