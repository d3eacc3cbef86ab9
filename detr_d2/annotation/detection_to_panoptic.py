"""COCO detection format (masks per annotation) -> COCO panoptic format.

Detection -> panoptic (:func:`convert_detection_to_panoptic`): each annotation's segmentation
(polygons, uncompressed or compressed RLE) becomes a segment of the image's panoptic PNG.
Rules, all reported in the returned :class:`ConversionReport`:

* **overlaps** (a pixel claimed by several annotations; panopticapi's converter refuses them):
  with ``overlap="resolve"`` the pixel goes to things before stuff, then to the annotation with
  the smaller mask, then to the one listed first; with ``overlap="error"`` the conversion stops.
  A segment left with no pixel is dropped (and listed in the report).
* several stuff annotations of the same category in one image are merged into one segment
  (COCO panoptic has at most one segment per stuff class and image).
* ``area`` and ``bbox`` (XYWH, pixels) are recomputed from the final pixels.
* segment ids: ``id_scheme="color"`` uses panopticapi's colour scheme (stuff = category colour,
  first thing of a category = category colour, further ones = jittered colours from a generator
  seeded per image; see :class:`~detr_d2.data.segment_ids.SegmentIdGenerator`); ``"sequential"``
  numbers the segments of each image 1, 2, ...

Both read every input with checks (errors name the file and field) and write their outputs all or
nothing: the PNG folder is filled under a temporary name and renamed into place, then the JSON is
renamed into place (a failure or Ctrl-C leaves the previous outputs as they were). Existing outputs
are refused unless ``overwrite``, which replaces the whole PNG folder (refused if it holds anything
but PNGs). PNGs are produced in parallel with ``workers`` processes.
"""

import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util

from ..data.coco_bounds import check_image_size, check_segmentation
from ..data.datasets.panoptic_metadata import build_panoptic_metadata, validate_categories
from ..data.panoptic_io import (
    check_unique,
    read_json,
    require_keys,
    save_panoptic_png,
)
from ..data.segment_ids import SegmentIdGenerator
from ..utils.atomic_io import atomic_directory, atomic_file, check_new_outputs
from .worker_pool import run_in_workers, worker_state

__all__ = [
    "ConversionReport",
    "bbox_xywh",
    "load_categories",
    "decode_segmentation",
    "detection_image_to_panoptic",
    "convert_detection_to_panoptic",
    "write_json",
]

logger = logging.getLogger(__name__)


@dataclass
class ConversionReport:
    """What a conversion did: counts, and the segments it could not keep."""

    images: int = 0
    segments: int = 0
    overlap_pixels: int = 0
    images_with_overlap: int = 0
    merged_stuff: int = 0
    # (image_id, annotation id or segment id, category_id, reason)
    dropped: List[Tuple[Any, Any, int, str]] = field(default_factory=list)

    def add(self, other: "ConversionReport") -> None:
        self.images += other.images
        self.segments += other.segments
        self.overlap_pixels += other.overlap_pixels
        self.images_with_overlap += other.images_with_overlap
        self.merged_stuff += other.merged_stuff
        self.dropped.extend(other.dropped)

    def summary(self) -> str:
        lines = [f"{self.images} images, {self.segments} segments written"]
        if self.images_with_overlap:
            lines.append(
                f"{self.images_with_overlap} images had overlapping annotations "
                f"({self.overlap_pixels} pixels re-assigned: things over stuff, "
                "smaller over larger)"
            )
        if self.merged_stuff:
            lines.append(
                f"{self.merged_stuff} stuff annotations merged into an earlier one "
                "of the same class"
            )
        if self.dropped:
            lines.append(f"{len(self.dropped)} segments dropped, e.g. {self.dropped[:5]}")
        return "; ".join(lines)


def load_categories(path: str) -> List[Dict[str, Any]]:
    """Categories from a JSON file holding a list (panopticapi's ``panoptic_coco_categories.json``)
    or an object with a ``categories`` list; validated and sorted by id."""
    data = read_json(path, "categories JSON")
    if isinstance(data, Mapping):
        require_keys(data, ["categories"], path)
        data = data["categories"]
    return validate_categories(data, path)


def decode_segmentation(segm: Any, height: int, width: int, where: str) -> np.ndarray:
    """Decode a COCO ``segmentation`` (polygons, uncompressed or compressed RLE) to HxW bool;
    bounds are checked first (:func:`~detr_d2.data.coco_bounds.check_segmentation`), so bad input
    is a ``ValueError`` naming ``where``, never a pycocotools crash."""
    height, width = check_image_size(height, width, where)
    check_segmentation(segm, height, width, where)
    if isinstance(segm, list):
        rle = mask_util.merge(mask_util.frPyObjects(segm, height, width))
    elif isinstance(segm["counts"], list):
        rle = mask_util.frPyObjects(dict(segm), height, width)
    else:
        counts = segm["counts"]
        rle = {
            "size": [height, width],
            "counts": counts.encode() if isinstance(counts, str) else counts,
        }
    return mask_util.decode(rle).astype(bool)


def bbox_xywh(mask: np.ndarray) -> List[int]:
    rows, cols = np.nonzero(mask)
    x0, y0 = int(cols.min()), int(rows.min())
    return [x0, y0, int(cols.max()) - x0 + 1, int(rows.max()) - y0 + 1]


def detection_image_to_panoptic(
    image: Mapping[str, Any],
    annotations: Sequence[Mapping[str, Any]],
    categories: Mapping[int, Mapping[str, Any]],
    *,
    overlap: str = "resolve",
    id_scheme: str = "color",
    seed: int = 0,
    source: str = "detection JSON",
) -> Tuple[np.ndarray, List[Dict[str, Any]], ConversionReport]:
    """One image's detection annotations -> (int32 HxW id map, segments_info, report).

    ``categories`` maps dataset category id -> category (``isthing``, ``color``). See the module
    docstring for the overlap, merging and id rules. ``segments_info`` entries have ``id``,
    ``category_id`` (dataset id), ``iscrowd``, ``area``, ``bbox`` (XYWH pixels), in annotation
    order.
    """
    h, w = int(image["height"]), int(image["width"])
    report = ConversionReport(images=1)
    # Decode; merge stuff of the same class into the first annotation of that class.
    pieces: List[Dict[str, Any]] = []
    stuff_piece: Dict[int, Dict[str, Any]] = {}
    for ann in annotations:
        where = f"{source}: annotation id {ann.get('id')} (image_id {image['id']})"
        mask = decode_segmentation(ann["segmentation"], h, w, where)
        cat = int(ann["category_id"])
        isthing = bool(categories[cat]["isthing"])
        if not isthing and cat in stuff_piece:
            stuff_piece[cat]["mask"] |= mask
            report.merged_stuff += 1
            continue
        piece = {
            "ann_id": ann.get("id"),
            "category_id": cat,
            "isthing": isthing,
            "mask": mask,
            "iscrowd": int(ann.get("iscrowd", 0)),
            "order": len(pieces),
        }
        pieces.append(piece)
        if not isthing:
            stuff_piece[cat] = piece

    claims = np.zeros((h, w), np.int32)
    for p in pieces:
        claims += p["mask"]
    n_overlap = int((claims > 1).sum())
    if n_overlap:
        if overlap == "error":
            raise ValueError(
                f"{source}: image_id {image['id']} ({image.get('file_name')}): annotations overlap "
                f"on {n_overlap} pixels (use overlap='resolve' to assign them by rule)"
            )
        report.overlap_pixels, report.images_with_overlap = n_overlap, 1
    # Pixel goes to the highest-priority claimant: thing > stuff, then smaller area, then order.
    owner = np.full((h, w), -1, np.int32)
    for p in sorted(pieces, key=lambda p: (not p["isthing"], int(p["mask"].sum()), p["order"])):
        free = p["mask"] & (owner < 0)
        owner[free] = p["order"]

    gen = SegmentIdGenerator(categories, seed) if id_scheme == "color" else None
    ids = np.zeros((h, w), np.int32)
    segments = []
    for p in pieces:
        final = owner == p["order"]
        area = int(final.sum())
        if area == 0:
            report.dropped.append(
                (
                    image["id"],
                    p["ann_id"],
                    p["category_id"],
                    "empty mask" if not p["mask"].any() else "fully covered",
                )
            )
            continue
        seg_id = gen.new_id(p["category_id"]) if gen is not None else len(segments) + 1
        ids[final] = seg_id
        segments.append(
            {
                "id": int(seg_id),
                "category_id": p["category_id"],
                "iscrowd": p["iscrowd"],
                "bbox": bbox_xywh(final),
                "area": area,
            }
        )
    report.segments = len(segments)
    return ids, segments, report


def _detection_task(task):
    index, image, anns, png_path = task
    st = worker_state()
    ids, segments, report = detection_image_to_panoptic(
        image,
        anns,
        st["categories"],
        overlap=st["overlap"],
        id_scheme=st["id_scheme"],
        seed=st["seed"] * 1_000_003 + index,
        source=st["source"],
    )
    save_panoptic_png(png_path, ids)
    return {
        "image_id": image["id"],
        "file_name": os.path.basename(png_path),
        "segments_info": segments,
    }, report


def _check_stuff_colors(categories: Sequence[Mapping[str, Any]], source: str) -> None:
    seen: Dict[Tuple[int, ...], Any] = {}
    for cat in categories:
        if not cat["isthing"]:
            color = tuple(cat["color"])
            if color in seen:
                raise ValueError(
                    f"{source}: stuff categories {seen[color]} and {cat['id']} share the colour "
                    f"{list(color)}, so their segment ids would collide; give them distinct "
                    "colours or use id_scheme='sequential'"
                )
            seen[color] = cat["id"]


def convert_detection_to_panoptic(
    detection_json: str,
    categories_json: str,
    output_json: str,
    output_root: str,
    *,
    overlap: str = "resolve",
    id_scheme: str = "color",
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
) -> ConversionReport:
    """COCO detection JSON + categories file -> panoptic PNGs in ``output_root`` + ``output_json``.

    Every image of the detection JSON gets a PNG ``<image file stem>.png`` (images without
    annotations get an all-void PNG). Categories without ``color`` get the fixed palette colour
    of the metadata. Outputs are written all or nothing (module docstring). Returns the
    :class:`ConversionReport`.
    """
    if overlap not in ("resolve", "error"):
        raise ValueError(f"overlap must be 'resolve' or 'error', got {overlap!r}")
    if id_scheme not in ("color", "sequential"):
        raise ValueError(f"id_scheme must be 'color' or 'sequential', got {id_scheme!r}")
    inputs = [detection_json, categories_json]
    replace_root = check_new_outputs(output_json, output_root, overwrite, inputs)
    categories = load_categories(categories_json)
    colors = build_panoptic_metadata(categories, categories_json)["stuff_colors"]
    categories = [dict(c, color=list(col)) for c, col in zip(categories, colors)]
    if id_scheme == "color":
        _check_stuff_colors(categories, categories_json)
    by_id = {c["id"]: c for c in categories}

    data = read_json(detection_json, "detection JSON")
    require_keys(data, ["images", "annotations"], detection_json)
    images, stems = {}, {}
    check_unique(
        [img.get("id") if isinstance(img, Mapping) else None for img in data["images"]],
        lambda i: f"{detection_json}: images[{i}]",
        "id",
    )
    for i, img in enumerate(data["images"]):
        where = f"{detection_json}: images[{i}]"
        require_keys(img, ["id", "file_name", "height", "width"], where)
        check_image_size(img["height"], img["width"], f"{where} (id {img['id']!r})")
        stem = os.path.splitext(os.path.basename(img["file_name"]))[0]
        if stem in stems:
            raise ValueError(
                f"{where}: file name stem {stem!r} also used by image id {stems[stem]}"
            )
        stems[stem] = img["id"]
        images[img["id"]] = img
    anns_by_image: Dict[Any, List] = defaultdict(list)
    for i, ann in enumerate(data["annotations"]):
        ann_id = ann.get("id") if isinstance(ann, Mapping) else "?"
        where = f"{detection_json}: annotations[{i}] (id {ann_id})"
        require_keys(ann, ["image_id", "category_id", "segmentation"], where)
        if ann["image_id"] not in images:
            raise ValueError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
        if ann["category_id"] not in by_id:
            raise ValueError(
                f"{where}: category_id {ann['category_id']!r} is not in the categories of "
                f"{categories_json} (known ids: {sorted(by_id)})"
            )
        anns_by_image[ann["image_id"]].append(ann)

    state = {
        "categories": by_id,
        "overlap": overlap,
        "id_scheme": id_scheme,
        "seed": seed,
        "source": detection_json,
    }
    report = ConversionReport()
    with atomic_file(output_json, overwrite, inputs) as json_tmp:
        with atomic_directory(output_root, replace_root, inputs) as root_tmp:
            tasks = []
            for index, (image_id, img) in enumerate(images.items()):
                png = os.path.join(
                    root_tmp, os.path.splitext(os.path.basename(img["file_name"]))[0] + ".png"
                )
                tasks.append((index, img, anns_by_image.get(image_id, []), png))
            results = run_in_workers(
                _detection_task, tasks, state, workers, "detection -> panoptic"
            )
            annotations = []
            for ann, rep in results:
                annotations.append(ann)
                report.add(rep)
            out = {k: data[k] for k in ("info", "licenses") if k in data}
            out.update(images=list(images.values()), annotations=annotations, categories=categories)
            write_json(json_tmp, out)
        # the PNG folder is in place; leaving the outer block puts the JSON in place
    if report.images_with_overlap or report.dropped or report.merged_stuff:
        logger.warning(f"{detection_json}: {report.summary()}")
    return report


def write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
