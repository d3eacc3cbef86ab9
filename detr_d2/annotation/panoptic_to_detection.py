"""COCO panoptic format -> COCO detection format.

Panoptic -> detection (:func:`convert_panoptic_to_detection`): one annotation per thing segment
(stuff too with ``include_stuff``) with a compressed RLE mask, ``area`` and ``bbox`` from the
PNG, ``iscrowd`` from ``segments_info``; annotation ids 1, 2, ... over the whole file.

Every input is read with checks (errors name the file and field); the PNGs are read in parallel
with ``workers`` processes. The JSON is written to a temporary file and renamed into place (a
failure or Ctrl-C leaves the previous output as it was); an existing output is refused unless
``overwrite``.
"""

import logging
import os
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util

from ..data.datasets.panoptic_metadata import validate_categories
from ..data.panoptic_io import (
    check_panoptic_ids,
    check_segment_ids_of_map,
    join_under,
    read_json,
    read_panoptic_ids,
    require_keys,
)
from ..utils.atomic_io import atomic_file
from .detection_to_panoptic import ConversionReport, bbox_xywh, write_json
from .worker_pool import run_in_workers, worker_state

__all__ = ["panoptic_image_to_detection", "convert_panoptic_to_detection"]

logger = logging.getLogger(__name__)


def panoptic_image_to_detection(
    png_path: str,
    segments_info: Sequence[Mapping[str, Any]],
    categories: Mapping[int, Mapping[str, Any]],
    image: Mapping[str, Any],
    *,
    include_stuff: bool = False,
    source: str = "panoptic JSON",
) -> Tuple[List[Dict[str, Any]], ConversionReport]:
    """One panoptic PNG + its ``segments_info`` -> detection annotations (without ``id``).

    Each kept segment gives ``image_id``, ``category_id`` (dataset id), ``segmentation``
    (compressed RLE, counts as str), ``area``, ``bbox`` (XYWH pixels) and ``iscrowd``. The ids
    of the PNG and of ``segments_info`` must be the same (``check_segment_ids_of_map``).
    """
    ids = read_panoptic_ids(png_path).astype(np.int64)
    if "height" in image and "width" in image and ids.shape != (image["height"], image["width"]):
        raise ValueError(
            f"{png_path} (pan_seg_file_name) is {ids.shape[1]}x{ids.shape[0]} but 'images' says "
            f"{image['width']}x{image['height']} (WxH) for image_id {image['id']}"
        )
    check_segment_ids_of_map(ids, segments_info, png_path, image["id"], source)
    report = ConversionReport(images=1)
    anns = []
    for j, seg in enumerate(segments_info):
        cat = seg["category_id"]
        if cat not in categories:
            raise ValueError(
                f"{source}: image_id {image['id']}: segments_info[{j}] has category_id {cat!r}, "
                f"which is not in the categories (known ids: {sorted(categories)})"
            )
        if not categories[cat]["isthing"] and not include_stuff:
            continue
        mask = ids == int(seg["id"])
        rle = mask_util.encode(np.asfortranarray(mask[:, :, None].astype(np.uint8)))[0]
        rle["counts"] = rle["counts"].decode("ascii")
        anns.append(
            {
                "image_id": image["id"],
                "category_id": cat,
                "segmentation": rle,
                "area": int(mask.sum()),
                "bbox": bbox_xywh(mask),
                "iscrowd": int(seg.get("iscrowd", 0)),
            }
        )
    report.segments = len(anns)
    return anns, report


def _panoptic_task(task):
    png_path, segments_info, image = task
    st = worker_state()
    return panoptic_image_to_detection(
        png_path,
        segments_info,
        st["categories"],
        image,
        include_stuff=st["include_stuff"],
        source=st["source"],
    )


def convert_panoptic_to_detection(
    panoptic_json: str,
    panoptic_root: str,
    output_json: str,
    *,
    include_stuff: bool = False,
    workers: int = 1,
    overwrite: bool = False,
) -> ConversionReport:
    """Panoptic JSON + PNGs -> a COCO instances JSON (RLE masks) of the thing segments.

    The output keeps ``info``/``licenses``/``images`` and lists the thing categories (all
    categories with ``include_stuff``), so Detectron2's ``register_coco_instances`` can load it.
    An existing ``output_json`` is refused unless ``overwrite``; it is written atomically.
    """
    with atomic_file(
        output_json, overwrite, [panoptic_json]
    ) as json_tmp:  # fails now if unwritable
        data = read_json(panoptic_json, "panoptic JSON")
        require_keys(data, ["images", "annotations", "categories"], panoptic_json)
        categories = validate_categories(data["categories"], panoptic_json)
        by_id = {c["id"]: c for c in categories}
        images = {}
        for i, img in enumerate(data["images"]):
            require_keys(img, ["id", "file_name"], f"{panoptic_json}: images[{i}]")
            images[img["id"]] = img
        check_panoptic_ids(data, panoptic_json)
        tasks = []
        for i, ann in enumerate(data["annotations"]):
            where = f"{panoptic_json}: annotations[{i}]"
            require_keys(ann, ["image_id", "file_name", "segments_info"], where)
            if ann["image_id"] not in images:
                raise ValueError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
            for j, seg in enumerate(ann["segments_info"]):
                require_keys(seg, ["id", "category_id"], f"{where}: segments_info[{j}]")
            png = join_under(panoptic_root, ann["file_name"], f"{where} 'file_name'")
            if not os.path.isfile(png):
                raise FileNotFoundError(f"{where}: panoptic PNG not found (file_name): {png}")
            tasks.append((png, ann["segments_info"], images[ann["image_id"]]))

        state = {"categories": by_id, "include_stuff": include_stuff, "source": panoptic_json}
        results = run_in_workers(_panoptic_task, tasks, state, workers, "panoptic -> detection")
        report = ConversionReport()
        annotations = []
        for anns, rep in results:
            report.add(rep)
            for ann in anns:
                annotations.append(dict(ann, id=len(annotations) + 1))
        out = {k: data[k] for k in ("info", "licenses") if k in data}
        kept = [c for c in categories if include_stuff or c["isthing"]]
        out.update(images=list(images.values()), annotations=annotations, categories=kept)
        write_json(json_tmp, out)
    if report.dropped:
        logger.warning(f"{panoptic_json}: {report.summary()}")
    return report
