"""Register any COCO-panoptic-format dataset with Detectron2 in one call.

A dataset is a panoptic JSON (``annotations`` with ``file_name``/``image_id``/``segments_info``,
``categories``, optionally ``images``), a folder of panoptic PNGs and a folder of images with
**any** extension (``.jpg``, ``.png``, ...), unlike Detectron2's ``load_coco_panoptic_json`` which
assumes ``.jpg``. Example::

    from detr_d2.data.datasets import register_panoptic_dataset
    register_panoptic_dataset("site_train", "site/images", "site/panoptic", "site/panoptic.json")
"""

import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..panoptic_io import check_panoptic_ids, join_under, read_json, require_keys
from .panoptic_metadata import build_panoptic_metadata

__all__ = [
    "load_panoptic_json",
    "panoptic_dataset_metadata",
    "register_panoptic_dataset",
    "IMAGE_EXTENSIONS",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class _ImageIndex:
    """Find an image in ``image_root`` by its stem, whatever its extension (one ``scandir``)."""

    def __init__(self, image_root: str):
        self.image_root = image_root
        self._by_stem: Optional[Dict[str, List[str]]] = None

    def find(self, stem: str) -> List[str]:
        if self._by_stem is None:
            self._by_stem = {}
            if os.path.isdir(self.image_root):
                for entry in os.scandir(self.image_root):
                    base, ext = os.path.splitext(entry.name)
                    if ext.lower() in IMAGE_EXTENSIONS:
                        self._by_stem.setdefault(base, []).append(entry.name)
        return sorted(self._by_stem.get(stem, []))


def _resolve_image(
    index: _ImageIndex, image_entry: Optional[Mapping[str, Any]], png_name: str, where: str
) -> Tuple[Optional[str], str]:
    """Image of an annotation: ``images[].file_name`` if it exists, else ``<stem>.<any ext>``.

    Returns ``(path or None when missing, the name looked for)``; a name leaving ``image_root``
    raises an error naming ``where``.
    """
    if image_entry is not None and "file_name" in image_entry:
        exact = join_under(index.image_root, image_entry["file_name"], f"{where} 'file_name'")
        if os.path.isfile(exact):
            return exact, image_entry["file_name"]
        stem = os.path.splitext(image_entry["file_name"])[0]
    else:
        stem = os.path.splitext(png_name)[0]
    found = index.find(stem)
    if len(found) > 1:
        raise ValueError(
            f"{index.image_root}: several images match {stem!r} ({found}); keep one, or list the "
            "exact file in the JSON's 'images' section"
        )
    if found:
        return os.path.join(index.image_root, found[0]), found[0]
    return None, image_entry["file_name"] if image_entry is not None and "file_name" in (
        image_entry
    ) else f"{stem}.<{'|'.join(e[1:] for e in IMAGE_EXTENSIONS)}>"


def load_panoptic_json(
    json_file: str,
    image_root: str,
    panoptic_root: str,
    metadata: Mapping[str, Any],
    missing: str = "error",
) -> List[Dict[str, Any]]:
    """Load a COCO panoptic JSON into Detectron2 dataset dicts (like ``load_coco_panoptic_json``).

    Args:
        json_file: the panoptic JSON.
        image_root: folder of the images (any extension; ``images[].file_name`` is used when the
            JSON has an ``images`` section, otherwise the PNG's stem with any image extension).
        panoptic_root: folder of the panoptic PNGs (``annotations[].file_name``).
        metadata: has ``thing_dataset_id_to_contiguous_id`` / ``stuff_dataset_id_to_contiguous_id``.
        missing: "error" (default) raises if an image or PNG is missing; "skip" drops those
            entries with one warning giving the count.

    Returns:
        One dict per annotation: ``file_name``, ``image_id``, ``height``/``width`` (when the JSON
        has ``images``), ``pan_seg_file_name``, ``segments_info`` (list of dicts with ``id``,
        **contiguous** ``category_id``, ``isthing``, ``iscrowd`` and, if in the JSON, ``area``
        and ``bbox`` (XYWH, pixels)).
    """
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
    data = read_json(json_file, "panoptic JSON")
    require_keys(data, ["annotations"], json_file)
    if not isinstance(data["annotations"], list):
        raise ValueError(f"{json_file}: 'annotations' must be a list")
    thing_map = metadata["thing_dataset_id_to_contiguous_id"]
    stuff_map = metadata["stuff_dataset_id_to_contiguous_id"]
    images = {}
    for i, img in enumerate(data.get("images", [])):
        require_keys(img, ["id"], f"{json_file}: images[{i}]")
        images[img["id"]] = img
    check_panoptic_ids(data, json_file)
    index = _ImageIndex(image_root)

    dicts, missing_images, missing_pngs = [], [], []
    for i, ann in enumerate(data["annotations"]):
        where = f"{json_file}: annotations[{i}]"
        require_keys(ann, ["file_name", "image_id", "segments_info"], where)
        image_entry = images.get(ann["image_id"])
        if images and image_entry is None:
            raise ValueError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
        image_where = where if image_entry is None else f"{json_file}: image_id {ann['image_id']!r}"
        image_file, image_name = _resolve_image(index, image_entry, ann["file_name"], image_where)
        png_file = join_under(panoptic_root, ann["file_name"], f"{where} 'file_name'")
        if image_file is None:
            missing_images.append(image_name)
            continue
        if not os.path.isfile(png_file):
            missing_pngs.append(png_file)
            continue
        segments = []
        if not isinstance(ann["segments_info"], list):
            raise ValueError(f"{where}: 'segments_info' must be a list")
        for j, seg in enumerate(ann["segments_info"]):
            seg_where = f"{where} ({ann['file_name']}): segments_info[{j}]"
            require_keys(seg, ["id", "category_id"], seg_where)
            cat = seg["category_id"]
            if cat in thing_map:
                contiguous, isthing = thing_map[cat], True
            elif cat in stuff_map:
                contiguous, isthing = stuff_map[cat], False
            else:
                raise ValueError(
                    f"{seg_where}: category_id {cat!r} is not in the categories "
                    f"(known ids: {sorted(list(thing_map) + list(stuff_map))})"
                )
            out = {
                "id": int(seg["id"]),
                "category_id": contiguous,
                "isthing": isthing,
                "iscrowd": int(seg.get("iscrowd", 0)),
            }
            for key in ("area", "bbox"):
                if key in seg:
                    out[key] = seg[key]
            segments.append(out)
        record = {
            "file_name": image_file,
            "image_id": ann["image_id"],
            "pan_seg_file_name": png_file,
            "segments_info": segments,
        }
        if image_entry is not None and "height" in image_entry and "width" in image_entry:
            record["height"], record["width"] = (
                int(image_entry["height"]),
                int(image_entry["width"]),
            )
        dicts.append(record)

    n_missing = len(missing_images) + len(missing_pngs)
    if n_missing:
        msg = (
            f"{json_file}: {len(missing_images)} image(s) missing under {image_root} (field "
            f"'file_name', e.g. {missing_images[:3]}) and {len(missing_pngs)} panoptic PNG(s) "
            f"missing (field 'pan_seg_file_name', e.g. {missing_pngs[:3]}), out of "
            f"{len(data['annotations'])} annotations"
        )
        if missing == "error":
            raise FileNotFoundError(msg + ". Pass missing='skip' to train on the rest.")
        logger.warning(msg + "; those entries are skipped.")
    logger.info(f"Loaded {len(dicts)} images in COCO panoptic format from {json_file}")
    return dicts


def panoptic_dataset_metadata(
    categories: Sequence[Mapping[str, Any]],
    source: str,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    json_file: Optional[str] = None,
) -> Dict[str, Any]:
    """The metadata :func:`register_panoptic_dataset` registers (see there); errors name
    ``source``."""
    meta = build_panoptic_metadata(categories, source)
    meta.update(
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        image_root=image_root,
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        label_divisor=1000,
    )
    if json_file is not None:
        meta["json_file"] = json_file
    return meta


def register_panoptic_dataset(
    name: str,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    categories: Optional[Sequence[Mapping[str, Any]]] = None,
    *,
    json_file: Optional[str] = None,
    missing: str = "error",
) -> Dict[str, Any]:
    """Register a COCO-panoptic-format dataset in ``DatasetCatalog`` and ``MetadataCatalog``.

    Args:
        name: dataset name (must not be registered yet).
        image_root, panoptic_root, panoptic_json: see :func:`load_panoptic_json`.
        categories: COCO panoptic categories (``id``, ``name``, ``isthing``, optional ``color``);
            read from ``panoptic_json`` now when None (pass them to avoid reading a large JSON
            at registration time).
        json_file: optional instances JSON (stored as metadata ``json_file``).
        missing: "error" or "skip" for missing images/PNGs (see :func:`load_panoptic_json`).

    The metadata is Detectron2's "standard" panoptic one: contiguous id = position of the category
    in the list sorted by dataset id (things and stuff together), ``thing_classes`` and
    ``stuff_classes`` both list all names, plus ``panoptic_root``, ``panoptic_json``,
    ``image_root``, ``json_file``, ``evaluator_type="coco_panoptic_seg"``, ``ignore_label=255``,
    ``label_divisor=1000`` and ``categories``. Returns that metadata as a dict.
    """
    if name in DatasetCatalog.list():
        raise ValueError(f"dataset {name!r} is already registered; pick another name")
    if categories is None:
        data = read_json(panoptic_json, "panoptic JSON")
        require_keys(data, ["categories"], panoptic_json)
        categories = data["categories"]
        source = panoptic_json
    else:
        source = f"categories passed for dataset {name!r}"
    meta = panoptic_dataset_metadata(
        categories, source, image_root, panoptic_root, panoptic_json, json_file
    )
    DatasetCatalog.register(
        name, lambda: load_panoptic_json(panoptic_json, image_root, panoptic_root, meta, missing)
    )
    MetadataCatalog.get(name).set(**meta)
    return meta
