"""Panoptic labels from thing-only annotations plus a panoptic model's stuff predictions.

Input: a COCO instances JSON (things only; polygons or RLE), its images, and a panoptic model (any
callable ``BGR image -> Detectron2 output dict`` with ``panoptic_seg``, e.g.
``DetrPanopticPredictor``, plus the metadata of its classes). Output: COCO panoptic PNGs + JSON
where

* **thing segments come from the annotations exactly**: rasterised, overlaps resolved by the rules
  of ``tools/convert_detection_to_panoptic.py`` (``detection_image_to_panoptic``: things before
  stuff, then smaller before larger, then the first listed; crowd kept). The model never moves, adds
  or removes a thing pixel;
* every other pixel takes the model's **stuff** prediction: one segment per stuff category and
  image, either the model's own stuff classes (ids, names, colours of its metadata) or, through a
  *stuff map* file, a coarser set of output categories;
* a pixel the model calls a **thing** that no annotation covers becomes **void** (0): an
  unannotated object is never turned into an invented instance nor into stuff. Pixels the model
  leaves void, or gives a stuff class the stuff map does not map, are void too.

The stuff map file: :mod:`detr_d2.annotation.stuff_map`.
"""

import os
from dataclasses import asdict
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util

from ..data.coco_bounds import check_image_size
from ..data.dataset_mappers.detr_panoptic_dataset_mapper import read_image_checked
from ..data.datasets.panoptic_metadata import validate_categories
from ..data.panoptic_io import (
    join_under,
    read_json,
    require_keys,
    save_panoptic_png,
)
from ..utils.atomic_io import atomic_directory, atomic_write_json
from .detection_to_panoptic import (
    ConversionReport,
    decode_segmentation,
    detection_image_to_panoptic,
)
from .stuff_coverage import ImageCoverage, StuffFromModelSummary, summarise
from .stuff_map import (
    MODEL_THING,
    identity_stuff_map,
    load_stuff_map,
    model_label_map,
    model_stuff_categories,
    with_colors,
)
from .worker_pool import run_in_workers, worker_state

__all__ = ["compose_image", "add_stuff_from_model"]


def compose_image(
    image: Mapping[str, Any],
    annotations: Sequence[Mapping[str, Any]],
    categories: Mapping[int, Mapping[str, Any]],
    label_map: np.ndarray,
    *,
    overlap: str = "resolve",
    seed: int = 0,
    source: str = "instances JSON",
) -> Tuple[np.ndarray, List[Dict[str, Any]], ImageCoverage, ConversionReport]:
    """One image: thing ``annotations`` (exact) + stuff from ``label_map`` (:func:`model_label_map`)
    -> (int32 HxW segment id map, ``segments_info`` with dataset ids, coverage, conversion report).

    ``categories``: dataset id -> category (``isthing``, ``color``) for things and output stuff.
    """
    h, w = int(image["height"]), int(image["width"])
    if label_map.shape != (h, w):
        raise ValueError(
            f"{source}: image_id {image['id']}: the model's map is "
            f"{label_map.shape[1]}x{label_map.shape[0]}, "
            f"the image {w}x{h} (WxH)"
        )
    annotated = np.zeros((h, w), bool)
    for ann in annotations:
        where = f"{source}: annotation id {ann.get('id')} (image_id {image['id']})"
        annotated |= decode_segmentation(ann["segmentation"], h, w, where)
    stuff_anns = []
    for cat in np.unique(label_map[label_map > 0]).tolist():
        mask = (label_map == cat) & ~annotated
        if mask.any():
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            stuff_anns.append(
                {"id": f"model stuff {cat}", "category_id": int(cat), "segmentation": rle}
            )
    ids, segments, report = detection_image_to_panoptic(
        image,
        list(annotations) + stuff_anns,
        categories,
        overlap=overlap,
        id_scheme="color",
        seed=seed,
        source=source,
    )
    n = h * w
    thing_ids = [s["id"] for s in segments if categories[s["category_id"]]["isthing"]]
    things = int(np.isin(ids, thing_ids).sum())
    void_mask = ids == 0
    void_thing = int((void_mask & (label_map == MODEL_THING)).sum())
    void = int(void_mask.sum())
    pct = lambda x: round(100.0 * x / n, 3)  # noqa: E731
    coverage = ImageCoverage(
        image["id"],
        image["file_name"],
        n,
        pct(things),
        pct(n - things - void),
        pct(void),
        pct(void_thing),
        pct(void - void_thing),
    )
    return ids, segments, coverage, report


def _compose_task(task):
    index, image, anns, label_map, png_path = task
    st = worker_state()
    ids, segments, coverage, report = compose_image(
        image,
        anns,
        st["categories"],
        label_map,
        overlap=st["overlap"],
        seed=st["seed"] * 1_000_003 + index,
        source=st["source"],
    )
    save_panoptic_png(png_path, ids)
    ann = {
        "image_id": image["id"],
        "file_name": os.path.basename(png_path),
        "segments_info": segments,
    }
    return ann, coverage, report


def _read_instances(instances_json: str, image_root: str):
    """Images, annotations per image and thing categories of an instances JSON, checked."""
    data = read_json(instances_json, "instances JSON")
    require_keys(data, ["images", "annotations", "categories"], instances_json)
    raw_cats = data["categories"]
    if not isinstance(raw_cats, list):
        raise ValueError(f"{instances_json}: 'categories' must be a list")
    cats = []
    for i, cat in enumerate(raw_cats):
        require_keys(cat, ["id", "name"], f"{instances_json}: categories[{i}]")
        if cat.get("isthing", 1) not in (1, True):
            raise ValueError(
                f"{instances_json}: categories[{i}] ({cat['name']}) has isthing "
                f"{cat['isthing']!r}: this tool takes "
                "thing annotations only (stuff comes from the model); for stuff annotations use "
                "tools/convert_detection_to_panoptic.py"
            )
        cats.append(dict(cat, isthing=1))
    things = with_colors(
        validate_categories(cats, f"{instances_json}: 'categories'"), instances_json
    )
    thing_ids = {c["id"] for c in things}
    images, stems = {}, {}
    for i, img in enumerate(data["images"]):
        where = f"{instances_json}: images[{i}]"
        require_keys(img, ["id", "file_name", "height", "width"], where)
        if img["id"] in images:
            raise ValueError(f"{where}: duplicate image id {img['id']!r}")
        stem = os.path.splitext(os.path.basename(img["file_name"]))[0]
        if stem in stems:
            raise ValueError(
                f"{where}: file name stem {stem!r} also used by image id {stems[stem]} (PNG "
                "names clash)"
            )
        stems[stem] = img["id"]
        check_image_size(img["height"], img["width"], f"{where} (id {img['id']!r})")
        path = join_under(image_root, img["file_name"], f"{where} 'file_name'")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{where}: image not found (file_name {img['file_name']!r}): {path}"
            )
        images[img["id"]] = img
    anns: Dict[Any, List[Dict[str, Any]]] = {k: [] for k in images}
    for i, ann in enumerate(data["annotations"]):
        where = (
            f"{instances_json}: annotations[{i}] (id "
            f"{ann.get('id') if isinstance(ann, Mapping) else '?'})"
        )
        require_keys(ann, ["image_id", "category_id", "segmentation"], where)
        if ann["image_id"] not in images:
            raise ValueError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
        if ann["category_id"] not in thing_ids:
            raise ValueError(
                f"{where}: category_id {ann['category_id']!r} is not in 'categories' (ids "
                f"{sorted(thing_ids)})"
            )
        anns[ann["image_id"]].append(ann)
    return data, images, anns, things


def add_stuff_from_model(
    instances_json: str,
    image_root: str,
    output_dir: str,
    predict: Callable[[np.ndarray], Dict[str, Any]],
    metadata: Any,
    *,
    stuff_map: Optional[str] = None,
    workers: int = 1,
    overwrite: bool = False,
    overlap: str = "resolve",
    seed: int = 0,
    read_image: Optional[Callable[[str], np.ndarray]] = None,
    protected: Sequence[str] = (),
) -> StuffFromModelSummary:
    """Write ``output_dir/panoptic/*.png``, ``output_dir/panoptic.json`` and
    ``output_dir/coverage.json``.

    Args:
        instances_json, image_root: the thing annotations and their images (never modified).
        output_dir: written all or nothing (a temporary sibling renamed at the end); an existing one
            is refused unless ``overwrite``. It may not contain an input.
        predict: BGR uint8 HxWx3 image -> Detectron2 output dict with ``panoptic_seg`` at the
        image's size. metadata: the Detectron2 panoptic metadata of the model's classes.
        stuff_map: optional stuff map file (module docstring); default: the model's stuff classes.
        workers: processes composing and writing the PNGs while the model runs in this process.
        overlap: "resolve" or "error" for overlapping thing annotations (as the detection
        converter). read_image: path -> BGR image (default: ``read_image_checked``, EXIF-aware,
        as training). protected: further input files (config, weights) the output must not contain.

    The output JSON has the instances JSON's ``images`` (and ``info``/``licenses``), one annotation
    per image and the categories: the things of the instances JSON, then the output stuff
    categories.
    """
    if overlap not in ("resolve", "error"):
        raise ValueError(f"overlap must be 'resolve' or 'error', got {overlap!r}")
    model_stuff = model_stuff_categories(metadata)
    smap = (
        load_stuff_map(stuff_map, model_stuff)
        if stuff_map
        else identity_stuff_map(
            model_stuff, f"the model's dataset {getattr(metadata, 'name', '?')!r}"
        )
    )
    inputs = [instances_json, image_root, stuff_map or "", *protected]
    data, images, anns, things = _read_instances(instances_json, image_root)
    clash = sorted({c["id"] for c in things} & {c["id"] for c in smap.categories})
    if clash:
        raise ValueError(
            f"stuff category id(s) {clash} ({stuff_map or 'the model'}) are also thing ids "
            f"of {instances_json}; "
            "give the stuff categories other ids in a stuff map file (--stuff-map)"
        )
    stuff_colors: Dict[Tuple[int, ...], Any] = {}
    for c in smap.categories:
        if tuple(c["color"]) in stuff_colors:
            raise ValueError(
                f"{stuff_map or 'the model metadata'}: stuff categories "
                f"{stuff_colors[tuple(c['color'])]} and "
                f"{c['id']} share the colour {c['color']}, so their segment ids would collide"
            )
        stuff_colors[tuple(c["color"])] = c["id"]
    categories = things + smap.categories
    by_id = {c["id"]: c for c in categories}
    if read_image is None:
        read_image = lambda path: read_image_checked(path, "BGR")  # noqa: E731

    summary = StuffFromModelSummary()
    state = {"categories": by_id, "overlap": overlap, "seed": seed, "source": instances_json}
    with atomic_directory(output_dir, overwrite=overwrite, inputs=inputs) as tmp:
        _refuse_replacing_a_foreign_folder(
            output_dir
        )  # (after atomic_directory's checks of the inputs)
        png_dir = os.path.join(tmp, "panoptic")
        os.makedirs(png_dir)
        tasks = _model_tasks(images, anns, image_root, png_dir, predict, metadata, smap, read_image)
        results = run_in_workers(
            _compose_task, tasks, state, workers, "stuff from model", total=len(images), chunksize=1
        )
        annotations = []
        for ann, coverage, report in results:
            annotations.append(ann)
            summary.coverage.append(coverage)
            summary.report.add(report)
        out = {k: data[k] for k in ("info", "licenses") if k in data}
        out.update(images=list(images.values()), annotations=annotations, categories=categories)
        atomic_write_json(os.path.join(tmp, "panoptic.json"), out)
        summarise(summary)
        atomic_write_json(
            os.path.join(tmp, "coverage.json"),
            {
                "summary": {
                    k: v for k, v in asdict(summary).items() if k not in ("coverage", "report")
                },
                "images": [asdict(c) for c in summary.coverage],
            },
        )
    return summary


def _refuse_replacing_a_foreign_folder(folder: str) -> None:
    """Before ``overwrite`` replaces ``folder`` as a whole: it must look like this tool's output."""
    if not os.path.isdir(folder):
        return
    foreign = [
        n
        for n in sorted(os.listdir(folder))
        if n not in ("panoptic", "panoptic.json", "coverage.json")
    ]
    png_dir = os.path.join(folder, "panoptic")
    if os.path.isdir(png_dir):
        foreign += [f"panoptic/{n}" for n in sorted(os.listdir(png_dir)) if not n.endswith(".png")]
    if foreign:
        raise ValueError(
            f"refusing to replace {folder}: it holds {foreign[:3]}, which this tool does not "
            "write; choose "
            "another output folder or delete it yourself"
        )


def _model_tasks(images, anns, image_root, png_dir, predict, metadata, smap, read_image):
    """Yield one compose task per image; the model runs here, in this process."""
    for index, (image_id, img) in enumerate(images.items()):
        path = os.path.join(image_root, img["file_name"])
        bgr = read_image(path)
        if bgr.shape[:2] != (int(img["height"]), int(img["width"])):
            raise ValueError(
                f"{path}: the image is {bgr.shape[1]}x{bgr.shape[0]} but the instances JSON says "
                f"{img['width']}x{img['height']} (width x height) for image id {image_id!r}"
            )
        pred = predict(bgr)
        if "panoptic_seg" not in pred:
            raise ValueError(
                "the model returned no 'panoptic_seg': use a panoptic model (MODEL.MASK_ON, "
                "TEST.PANOPTIC_ON)"
            )
        label_map = model_label_map(pred["panoptic_seg"], metadata, smap)
        png = os.path.join(
            png_dir, os.path.splitext(os.path.basename(img["file_name"]))[0] + ".png"
        )
        yield index, img, anns[image_id], label_map, png
