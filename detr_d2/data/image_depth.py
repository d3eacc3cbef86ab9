"""Images with more than 8 bits per channel: converted exactly (and said so) or refused.

DETR reads ``uint8`` images. PIL's ``convert("RGB")``, which Detectron2's ``read_image`` uses,
*clips* a 16-bit grayscale image (PIL mode ``I;16``) to 255 -- almost white -- and turns a float
image (mode ``F``, e.g. a TIFF with values in [0, 1]) almost black, without a word. Here:

* 16-bit grayscale (``I;16``, ``I;16B``, ``I;16L``, and 32-bit ``I`` holding values 0..65535)
  is mapped linearly and exactly onto 0..255: ``v8 = round(v16 * 255 / 65535)``
  (``(v16 * 255 + 32767) // 65535``), with a warning stating it;
* 16-bit-per-channel colour images, which PIL already decodes to 8 bits by keeping the high byte
  (``v8 = v16 >> 8``), are kept, with a warning stating that conversion;
* float images (``F``) and integer images outside 0..65535 are refused: their range has no single
  meaning (the message gives the values and how to convert).
"""

import logging
from typing import Optional

import numpy as np
from detectron2.utils.logger import log_first_n
from PIL import Image

__all__ = ["eight_bit_image", "sixteen_bit_colour"]

_GRAY_16 = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# EXIF orientation -> transposition (Pillow's ImageOps.exif_transpose table).
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _warn(message: str) -> None:
    log_first_n(logging.WARNING, message, n=5, name=__name__)


def sixteen_bit_colour(img: Image.Image) -> bool:
    """Whether PIL decodes ``img`` (opened, not yet loaded) from 16 bits per colour channel."""
    return img.mode in ("RGB", "RGBA") and any(
        ";16" in str(tile[3] if len(tile) > 3 else "") for tile in (img.tile or [])
    )


def eight_bit_image(img: Image.Image, file_name: str) -> Optional[Image.Image]:
    """An 8-bit grayscale (mode ``L``) copy of a 16-bit grayscale ``img``, None when ``img`` needs
    no conversion (8-bit modes, or 16-bit colour, for which a warning is logged); a float or
    out-of-range image raises ``ValueError`` naming ``file_name`` (field ``file_name``)."""
    if sixteen_bit_colour(img):
        _warn(
            f"{file_name} (file_name) has 16 bits per channel; it is read as 8 bits by keeping "
            "the high byte of each value (v8 = v16 >> 8)."
        )
        return None
    if img.mode not in _GRAY_16 and img.mode != "F":
        return None
    values = np.asarray(img)
    if values.size == 0:
        return None
    low, high = values.min(), values.max()
    if img.mode == "F":
        raise ValueError(
            f"{file_name} (file_name): a floating-point image (PIL mode 'F', values in "
            f"[{low:.4g}, {high:.4g}]); DETR reads 8-bit images and a float range has no single "
            "meaning. Convert it to an 8-bit PNG/JPEG first, e.g. "
            "np.clip(image * 255, 0, 255).round().astype(np.uint8) for values in [0, 1]."
        )
    if low < 0 or high > 65535:
        raise ValueError(
            f"{file_name} (file_name): a 32-bit integer image (PIL mode {img.mode!r}) with values "
            f"in [{low}, {high}], outside 0..65535; convert it to an 8-bit image first."
        )
    _warn(
        f"{file_name} (file_name) is a 16-bit grayscale image (PIL mode {img.mode!r}, values in "
        f"[{low}, {high}]); it is converted exactly to 8 bits: v8 = round(v16 * 255 / 65535)."
    )
    eight = (values.astype(np.uint32) * 255 + 32767) // 65535
    return _oriented(Image.fromarray(eight.astype(np.uint8)), img)


def _oriented(converted: Image.Image, original: Image.Image) -> Image.Image:
    """``converted`` turned as ``original``'s EXIF orientation says (as Detectron2's
    ``read_image`` does for 8-bit images)."""
    orientation = original.getexif().get(0x0112)
    method = _EXIF_TRANSPOSE.get(orientation)
    return converted if method is None else converted.transpose(method)
