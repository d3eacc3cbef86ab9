"""COCO 2017 panoptic: reuse Detectron2's registrations, check them, fill in only what is missing.

Detectron2 (``detectron2.data.datasets.builtin``) already registers, under
``$DETECTRON2_DATASETS`` (default ``./datasets``):

- ``coco_2017_train_panoptic``: images ``coco/train2017``, PNGs ``coco/panoptic_train2017``,
  JSON ``coco/annotations/panoptic_train2017.json``;
- ``coco_2017_val_panoptic``: ``coco/val2017``, ``coco/panoptic_val2017``,
  ``coco/annotations/panoptic_val2017.json``;
- ``coco_2017_val_100_panoptic``: ``coco/val2017``, ``coco/panoptic_val2017_100``,
  ``coco/annotations/panoptic_val2017_100.json`` (make it with
  ``datasets/prepare_coco_panoptic_subset.py``),

with the "standard" panoptic metadata DETR needs (contiguous ids 0..132 in category-id order,
``thing_classes``/``stuff_classes`` listing all 133 names, evaluator type "coco_panoptic_seg"...).
We never re-register those names: at import, :func:`ensure_coco_panoptic` checks their metadata
with :func:`missing_panoptic_metadata` and registers a name with :func:`register_panoptic_dataset`
only if Detectron2 did not (e.g. a build without the builtin registrations).
"""

import logging
import os
from typing import Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from .panoptic_metadata import missing_panoptic_metadata
from .register_panoptic import register_panoptic_dataset

__all__ = ["COCO_PANOPTIC_SPLITS", "ensure_coco_panoptic"]

logger = logging.getLogger(__name__)

# name -> (image_root, panoptic_root, panoptic_json, instances_json), relative to the datasets root.
COCO_PANOPTIC_SPLITS = {
    "coco_2017_train_panoptic": (
        "coco/train2017",
        "coco/panoptic_train2017",
        "coco/annotations/panoptic_train2017.json",
        "coco/annotations/instances_train2017.json",
    ),
    "coco_2017_val_panoptic": (
        "coco/val2017",
        "coco/panoptic_val2017",
        "coco/annotations/panoptic_val2017.json",
        "coco/annotations/instances_val2017.json",
    ),
    "coco_2017_val_100_panoptic": (
        "coco/val2017",
        "coco/panoptic_val2017_100",
        "coco/annotations/panoptic_val2017_100.json",
        "coco/annotations/instances_val2017_100.json",
    ),
}


def ensure_coco_panoptic(root: str) -> Dict[str, List[str]]:
    """Make sure the COCO panoptic splits are registered with usable metadata.

    Returns ``{name: problems}`` for names Detectron2 registered with incomplete metadata (each
    is logged as a warning; empty dict = all fine). Unregistered names are registered here.
    """
    registered = set(DatasetCatalog.list())
    problems = {}
    for name, (
        image_root,
        panoptic_root,
        panoptic_json,
        instances_json,
    ) in COCO_PANOPTIC_SPLITS.items():
        if name not in registered:
            register_panoptic_dataset(
                name,
                os.path.join(root, image_root),
                os.path.join(root, panoptic_root),
                os.path.join(root, panoptic_json),
                categories=COCO_CATEGORIES,
                json_file=os.path.join(root, instances_json),
            )
            continue
        found = missing_panoptic_metadata(MetadataCatalog.get(name))
        if found:
            problems[name] = found
            logger.warning(
                f"Detectron2's registration of {name!r} lacks metadata DETR needs: {found}"
            )
    return problems


ensure_coco_panoptic(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
