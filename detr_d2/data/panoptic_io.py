"""The project's one panoptic I/O layer: COCO-panoptic JSON and id PNGs in and out, and model
outputs converted to COCO panoptic predictions.

Conventions: a panoptic PNG is an RGB image whose colour encodes a segment id as
``id = R + 256 * G + 256**2 * B`` (panopticapi's ``rgb2id``/``id2rgb``, imported on first use); id 0
is void. Every error raised here names the offending file and, where there is one, the dataset field
(``file_name``, ``pan_seg_file_name``, ``segments_info``...) so a user can find the bad entry. Files
are written atomically (:mod:`detr_d2.utils.atomic_io`).
"""

import io
import json
import os
import urllib.parse
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ..utils.atomic_io import atomic_write_bytes

__all__ = [
    "rgb2id",
    "id2rgb",
    "read_json",
    "require_keys",
    "read_panoptic_png",
    "read_panoptic_ids",
    "check_panoptic_ids",
    "check_segment_ids",
    "check_segment_ids_of_map",
    "check_unique",
    "join_under",
    "prediction_png_name",
    "image_mode_problem",
    "encode_panoptic_png",
    "save_panoptic_png",
    "json_safe",
    "PanopticPredictionConverter",
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


# PIL modes that hold a panoptic id map: RGB, a palette of RGB colours, or RGBA whose alpha is
# ignored (as panopticapi's ``rgb2id(np.array(Image.open(path)))`` does).
_RGB_COMPATIBLE_MODES = ("RGB", "P", "RGBA")


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
    return f"it has PIL mode {mode!r}"


def _open_panoptic_png(path: str, field: str) -> Image.Image:
    """Open and decode a panoptic PNG; every failure names ``path`` and ``field``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"panoptic PNG not found ({field}): {path}")
    try:
        img = Image.open(path)
        img.load()
    except (OSError, ValueError, SyntaxError) as e:  # truncated / corrupt / not an image
        raise ValueError(f"{path} ({field}): cannot be decoded as a PNG: {e}") from None
    problem = image_mode_problem(img.mode)
    if problem is not None:
        img.close()
        raise ValueError(
            f"{path} ({field}): a panoptic PNG must be RGB with id = R + 256*G + 256^2*B, "
            f"but {problem}. Convert single-channel id maps with panopticapi.utils.id2rgb."
        )
    return img.convert("RGB") if img.mode == "P" else img


def read_panoptic_png(path: str, field: str = "pan_seg_file_name") -> np.ndarray:
    """Read a panoptic PNG as an ``uint8`` HxWx3 RGB array (ids still colour-encoded).

    Accepts RGB, palette and RGBA PNGs (alpha ignored, as panopticapi does). Raises
    ``FileNotFoundError`` for a missing file and ``ValueError`` for an undecodable or grayscale PNG,
    naming ``path`` and ``field``.
    """
    with _open_panoptic_png(path, field) as img:
        return np.asarray(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)


def read_panoptic_ids(path: str, field: str = "pan_seg_file_name") -> np.ndarray:
    """Read a panoptic PNG as an (H, W) ``uint32`` id map (0 = void), identical to panopticapi's
    ``rgb2id(np.array(Image.open(path), dtype=np.uint32))``; same files and errors as
    :func:`read_panoptic_png`, decoded without the intermediate (H, W, 3) array."""
    with _open_panoptic_png(path, field) as img:
        width, height = img.size
        # PIL stores RGB(A) as 4 bytes per pixel: packing is a copy, then the 4th byte is masked
        # out.
        raw_mode = "RGBA" if img.mode == "RGBA" else "RGBX"
        packed = np.frombuffer(img.tobytes("raw", raw_mode), dtype="<u4").reshape(height, width)
        return packed & np.uint32(0x00FFFFFF)


def check_segment_ids(
    present: Iterable[int],
    segments_info: Iterable[Mapping],
    png_path: str,
    image_id: Any = None,
    json_file: Optional[str] = None,
) -> None:
    """Raise ``ValueError`` unless the non-zero ids ``present`` in a panoptic PNG and the ids of
    its ``segments_info`` are the same set (a listed segment with no pixel, or a coloured region
    with no entry, means the JSON and the PNG do not belong together).

    ``present``: the ids of the PNG (e.g. ``np.unique`` of its id map; 0 = void is ignored). The
    message names the PNG, the image id, the JSON and the ids with their RGB colours.
    """
    listed = {int(s["id"]) for s in segments_info}
    present = {int(i) for i in present} - {0}
    where = png_path + (f" (image_id {image_id!r})" if image_id is not None else "")
    source = f" of {json_file}" if json_file else ""
    unlisted = sorted(present - listed)
    if unlisted:
        colours = [tuple(int(c) for c in id2rgb(i)) for i in unlisted[:5]]
        raise ValueError(
            f"{where}: segment id(s) {unlisted[:5]} (RGB {colours}) appear in the PNG but not in "
            f"'segments_info'{source} (listed ids: {sorted(listed)[:20]}). Every non-zero colour "
            "of a panoptic PNG must have a segments_info entry; use RGB (0,0,0) for void."
        )
    absent = sorted(listed - present)
    if absent:
        colours = [tuple(int(c) for c in id2rgb(i)) for i in absent[:5]]
        raise ValueError(
            f"{where}: segment id(s) {absent[:5]} (RGB {colours}) are listed in 'segments_info'"
            f"{source} but have no pixel in the PNG (ids in the PNG: {sorted(present)[:20]}). "
            "Remove those entries, or check that the JSON and the PNG folder belong together."
        )


# check_segment_ids_of_map: one comparison per segment costs as much as np.unique's sort at about
# 90 segments (128x128) to 250 (640x480)
MAX_SEGMENTS_COMPARED = 64


def check_segment_ids_of_map(
    ids: np.ndarray,
    segments_info: Sequence[Mapping],
    png_path: str,
    image_id: Any = None,
    json_file: Optional[str] = None,
) -> None:
    """:func:`check_segment_ids` for an id map ``ids`` (H, W) (same outcome and errors), without
    sorting its pixels when they agree: each listed id has a pixel, and void plus the listed ids
    cover every pixel. Otherwise (or with id 0 or a repeat listed) ``np.unique(ids)`` decides, as
    before. One comparison per listed segment instead of a sort: 0.04 vs 0.37 ms for a 128x128 map
    with 10 segments, 1.0 vs 8.7 ms for 640x480 with 30 (docs/speed.md); past
    :data:`MAX_SEGMENTS_COMPARED` segments the sort is cheaper and decides alone."""
    listed = [int(s["id"]) for s in segments_info]
    few = len(listed) <= MAX_SEGMENTS_COMPARED
    if few and 0 not in listed and len(set(listed)) == len(listed):
        counts = [np.count_nonzero(ids == i) for i in listed]
        if all(counts) and sum(counts) + np.count_nonzero(ids == 0) == ids.size:
            return
    check_segment_ids(np.unique(ids), segments_info, png_path, image_id, json_file)


def check_unique(values: Iterable[Any], where: Callable[[int], str], what: str) -> None:
    """Raise ``ValueError`` at the first value seen twice: ``"<where(i)>: <what> <v> repeats
    <where(first)>"``, ``i`` being the position of the repeat."""
    first: Dict[Any, int] = {}
    for i, value in enumerate(values):
        j = first.setdefault(value, i)
        if j != i:
            raise ValueError(
                f"{where(i)}: {what} {value!r} repeats {where(j)}; each {what} must be unique"
            )


def _normalised_name(name: Any) -> str:
    """``name`` as a relative path with ``.``/``..``/``//`` resolved (plain names as they are)."""
    name = str(name)
    return os.path.normpath(name) if "/" in name or "\\" in name else name


def check_panoptic_ids(data: Mapping[str, Any], json_file: str) -> None:
    """Raise ``ValueError`` (naming ``json_file``, the entry and the id) at a repeated image id
    (in ``images`` or ``annotations``), PNG name, or segment id within an image of a COCO panoptic
    JSON ``data``: one would silently be paired with another's files or pixels. Also checks that
    every annotation has ``file_name``, ``image_id`` and a ``segments_info`` list of entries with
    ``id`` and ``category_id``. Messages are built only on failure (COCO train: ~1.3M segments)."""
    images, anns = data.get("images", []), data["annotations"]
    check_unique([img["id"] for img in images], lambda i: f"{json_file}: images[{i}]", "id")
    ann_keys = ("file_name", "image_id", "segments_info")
    for i, ann in enumerate(anns):
        if type(ann) is not dict or not all(k in ann for k in ann_keys):
            require_keys(ann, ann_keys, f"{json_file}: annotations[{i}]")
    check_unique(
        [ann["image_id"] for ann in anns], lambda i: f"{json_file}: annotations[{i}]", "image_id"
    )
    check_unique(
        [_normalised_name(ann["file_name"]) for ann in anns],
        lambda i: f"{json_file}: annotations[{i}]",
        "file_name",
    )
    for i, ann in enumerate(anns):
        segments = ann["segments_info"]
        if not isinstance(segments, list):
            raise ValueError(f"{json_file}: annotations[{i}]: 'segments_info' must be a list")
        try:
            ids = [seg["id"] for seg in segments if "category_id" in seg]
        except (KeyError, TypeError):
            ids = []
        if len(ids) != len(segments):  # an entry without id / category_id: name it
            for j, seg in enumerate(segments):
                where = f"{json_file}: annotations[{i}] ({ann['file_name']}): segments_info[{j}]"
                require_keys(seg, ["id", "category_id"], where)
        if len(set(ids)) != len(ids):
            check_unique(
                ids,
                lambda j, i=i, ann=ann: (
                    f"{json_file}: annotations[{i}] (image_id {ann['image_id']!r}, "
                    f"{ann['file_name']}): segments_info[{j}]"
                ),
                "segment id",
            )


def join_under(root: str, name: Any, where: str) -> str:
    """``os.path.join(root, name)`` for a file name read from a dataset file, refusing a name that
    is not a non-empty string or that leaves ``root`` (absolute, or ``..`` after normalisation),
    with a ``ValueError`` naming ``where`` (the file and the entry) and the name."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: expected a file name (a non-empty string), got {name!r}")
    norm = os.path.normpath(name)
    if (
        os.path.isabs(name)
        or os.path.splitdrive(name)[0]
        or norm == os.pardir
        or (norm.startswith(os.pardir + os.sep))
    ):
        raise ValueError(
            f"{where}: file name {name!r} leaves its folder {root} (absolute or '..' paths are "
            "refused: dataset files may only name files under their root)"
        )
    return os.path.join(root, name)


def prediction_png_name(image_id: Any) -> str:
    """File name of an image's prediction PNG: its image id (URL-quoted, so a string id never
    names a folder), e.g. ``139.png``. Image ids are unique; stems are not (``a/0.jpg``,
    ``b/0.jpg``)."""
    return urllib.parse.quote(str(image_id), safe="") + ".png"


def encode_panoptic_png(id_map: np.ndarray) -> bytes:
    """PNG bytes of a (H, W) id map in COCO panoptic RGB encoding (``id2rgb``, ids modulo 2**24)."""
    with io.BytesIO() as out:
        Image.fromarray(np.asarray(id2rgb(np.asarray(id_map)), dtype=np.uint8)).save(
            out, format="PNG"
        )
        return out.getvalue()


def save_panoptic_png(path: str, id_map: np.ndarray) -> None:
    """Atomically write an (H, W) segment-id map as a COCO panoptic RGB PNG."""
    atomic_write_bytes(path, encode_panoptic_png(id_map))


def json_safe(value: Any) -> Any:
    """Convert numpy/torch scalars (and containers of them) to plain Python for ``json.dumps``."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


class PanopticPredictionConverter:
    """Convert ``output["panoptic_seg"]`` to ``(id_map, segments_info)`` with *dataset* category
    ids.

    Args:
        metadata: the dataset's Detectron2 metadata (``thing_dataset_id_to_contiguous_id``,
            ``stuff_dataset_id_to_contiguous_id``; ``label_divisor`` for ``segments_info is None``).
    """

    def __init__(self, metadata: Any):
        self._metadata = metadata
        self._thing_to_dataset = {
            v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()
        }
        self._stuff_to_dataset = {
            v: k for k, v in metadata.stuff_dataset_id_to_contiguous_id.items()
        }
        self._thing_contiguous_ids = set(metadata.thing_dataset_id_to_contiguous_id.values())

    def _dataset_category(self, segment: Dict[str, Any]) -> Dict[str, Any]:
        segment = dict(segment)
        isthing = segment.pop("isthing", None)
        if isthing is None:  # the model produced dataset category ids directly
            return segment
        mapping, kind = (
            (self._thing_to_dataset, "thing")
            if bool(isthing)
            else (self._stuff_to_dataset, "stuff")
        )
        contiguous = int(segment["category_id"])
        if contiguous not in mapping:
            raise KeyError(
                f"predicted segment {segment.get('id')} has isthing={isthing} and contiguous "
                f"category_id {contiguous}, which is not a {kind} class of this dataset "
                f"(metadata {kind}_dataset_id_to_contiguous_id has values "
                f"{sorted(mapping)[:10]}...)"
            )
        segment["category_id"] = mapping[contiguous]
        return segment

    def _from_label_divisor(self, id_map: np.ndarray) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
        label_divisor = getattr(self._metadata, "label_divisor", None)
        if label_divisor is None:
            raise ValueError(
                "panoptic_seg has segments_info None (ids = category * label_divisor + instance), "
                "but the dataset metadata has no 'label_divisor'"
            )
        segments_info = []
        for panoptic_label in np.unique(id_map).tolist():
            if panoptic_label == -1:  # VOID
                continue
            pred_class = panoptic_label // label_divisor
            segments_info.append(
                {
                    "id": int(panoptic_label) + 1,
                    "category_id": int(pred_class),
                    "isthing": pred_class in self._thing_contiguous_ids,
                }
            )
        # The official evaluation uses 0 for VOID.
        return id_map + 1, segments_info

    def __call__(
        self, panoptic_seg: Tuple[Any, Optional[Sequence[Dict[str, Any]]]]
    ) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
        """Returns ``(id_map (H, W) integer np.ndarray, segments_info with dataset category ids)``.

        Entries keep their other fields (e.g. ``score``) and lose ``isthing``, as in Detectron2.
        """
        id_map, segments_info = panoptic_seg
        if isinstance(id_map, torch.Tensor):
            id_map = id_map.cpu().numpy()
        id_map = np.asarray(id_map)
        if id_map.ndim != 2:
            raise ValueError(f"panoptic_seg id map must be (H, W), got shape {tuple(id_map.shape)}")
        if not np.issubdtype(id_map.dtype, np.integer):
            raise TypeError(f"panoptic_seg id map must hold integers, got dtype {id_map.dtype}")
        if segments_info is None:
            id_map, segments_info = self._from_label_divisor(id_map)
        converted = []
        for segment in segments_info:
            segment = json_safe(self._dataset_category(segment))
            segment["id"] = int(segment["id"])
            segment["category_id"] = int(segment["category_id"])
            converted.append(segment)
        return id_map, converted
