"""Checked reading and atomic writing of COCO-panoptic files (JSON, id PNGs, images).

Conventions: a panoptic PNG is an RGB image whose colour encodes a segment id as
``id = R + 256 * G + 256**2 * B`` (panopticapi's ``rgb2id``); id 0 is void. Every error raised here
names the offending file and, where there is one, the dataset field (``file_name``,
``pan_seg_file_name``, ``segments_info``...) so a user can find the bad entry.
"""

import functools
import io
import json
import os
import tempfile
from typing import Any, Iterable, Mapping, Optional

import numpy as np
from PIL import Image

__all__ = [
    "rgb2id",
    "id2rgb",
    "read_json",
    "require_keys",
    "read_panoptic_png",
    "read_panoptic_ids",
    "check_png_ids_listed",
    "image_mode_problem",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_save_image",
    "save_panoptic_png",
    "refuse_overwrite",
]


def _panopticapi_utils():
    """``panopticapi.utils``, imported on first use (panopticapi is an optional dependency:
    ``pip install panopticapi-lite`` or cocodataset/panopticapi from source)."""
    try:
        from panopticapi import utils
    except ImportError as e:
        raise ImportError(
            "reading/writing panoptic PNGs needs panopticapi: pip install panopticapi-lite "
            "(or pip install git+https://github.com/cocodataset/panopticapi.git)"
        ) from e
    return utils


def rgb2id(color: Any) -> Any:
    """panopticapi's ``rgb2id``: HxWx3 colours -> HxW ids (``R + 256*G + 256^2*B``)."""
    return _panopticapi_utils().rgb2id(color)


def id2rgb(id_map: Any) -> Any:
    """panopticapi's ``id2rgb``: HxW ids -> HxWx3 ``uint8`` colours, or one id -> [R, G, B]."""
    return _panopticapi_utils().id2rgb(id_map)


# PIL modes that encode a panoptic id map without loss once converted to RGB.
_RGB_COMPATIBLE_MODES = ("RGB", "P")


def read_json(path: str, what: str = "JSON file") -> Any:
    """Parse a JSON file; a missing file or malformed JSON raises an error naming ``path``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}: malformed {what}: {e.msg} at line {e.lineno}, column {e.colno}"
        ) from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: {what} is not UTF-8 text ({e})") from e


def require_keys(obj: Any, keys: Iterable[str], where: str) -> None:
    """Raise ``ValueError`` naming ``where`` if ``obj`` is not a dict holding all ``keys``."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing} (has {sorted(obj.keys())})")


def image_mode_problem(mode: str) -> Optional[str]:
    """Why a PIL mode cannot hold a panoptic id PNG, or None when it can (RGB or palette)."""
    if mode in _RGB_COMPATIBLE_MODES:
        return None
    if mode in ("L", "LA", "1", "I", "I;16", "F"):
        return f"it is single-channel (PIL mode {mode!r}, grayscale)"
    if mode == "RGBA":
        return "it has an alpha channel (PIL mode 'RGBA')"
    return f"it has PIL mode {mode!r}"


def read_panoptic_png(path: str, field: str = "pan_seg_file_name") -> np.ndarray:
    """Read a panoptic PNG as an ``uint8`` HxWx3 RGB array (ids still colour-encoded).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a PNG that is not RGB
    (grayscale, RGBA...), naming ``path`` and ``field``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"panoptic PNG not found ({field}): {path}")
    with Image.open(path) as img:
        problem = image_mode_problem(img.mode)
        if problem is not None:
            raise ValueError(
                f"{path} ({field}): a panoptic PNG must be RGB with id = R + 256*G + 256^2*B, "
                f"but {problem}. Convert single-channel id maps with panopticapi.utils.id2rgb."
            )
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_panoptic_ids(path: str, field: str = "pan_seg_file_name") -> np.ndarray:
    """Read a panoptic PNG and decode it to an ``int32`` HxW segment-id map (0 = void)."""
    return rgb2id(read_panoptic_png(path, field)).astype(np.int32)


def check_png_ids_listed(
    ids: np.ndarray, segments_info: Iterable[Mapping], png_path: str, image_id: Any = None
) -> None:
    """Raise ``ValueError`` if a non-zero id in ``ids`` has no entry in ``segments_info``.

    The message names the PNG, the id and its RGB colour (what an annotator sees).
    """
    listed = {int(s["id"]) for s in segments_info}
    present = np.unique(ids)
    unknown = [int(i) for i in present if i != 0 and int(i) not in listed]
    if unknown:
        colours = [tuple(int(c) for c in id2rgb(i)) for i in unknown[:5]]
        img = f" (image_id {image_id})" if image_id is not None else ""
        raise ValueError(
            f"{png_path}{img}: segment id(s) {unknown[:5]} (RGB {colours}) appear in the PNG but "
            f"not in 'segments_info' (listed ids: {sorted(listed)[:20]}). Every non-zero colour "
            "of a panoptic PNG must have a segments_info entry; use RGB (0,0,0) for void."
        )


def refuse_overwrite(output: str, inputs: Iterable[str]) -> None:
    """Raise ``ValueError`` if ``output`` is (or would replace) one of ``inputs``."""
    out = os.path.realpath(output)
    for inp in inputs:
        if inp and os.path.realpath(inp) == out:
            raise ValueError(f"refusing to write {output}: it is an input of this command ({inp})")


@functools.lru_cache(maxsize=1)
def _file_mode() -> int:
    """Permissions of a newly created file under the current umask (mkstemp alone gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory + ``os.replace``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str, obj: Any) -> None:
    """Atomically write ``obj`` as JSON (compact, UTF-8)."""
    atomic_write_bytes(path, json.dumps(obj).encode("utf-8"))


def atomic_save_image(path: str, array: np.ndarray, **save_kwargs: Any) -> None:
    """Atomically save an ``uint8`` HxW or HxWx3 array; the format follows ``path``'s extension."""
    fmt = Image.registered_extensions().get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image extension")
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **save_kwargs)
    atomic_write_bytes(path, buf.getvalue())


def save_panoptic_png(path: str, ids: np.ndarray) -> None:
    """Atomically write an HxW segment-id map as a COCO panoptic RGB PNG."""
    atomic_save_image(path, id2rgb(np.asarray(ids)).astype(np.uint8))
