"""Dataset registration. Importing registers COCO panoptic (if Detectron2 did not) and the
quickstart splits ``detr_quickstart_train`` / ``detr_quickstart_val`` (generated lazily)."""

from . import (
    quickstart,  # noqa: F401  (registers detr_quickstart_{train,val})
    register_coco_panoptic,  # noqa: F401  (checks / fills COCO panoptic registrations)
)
from .panoptic_metadata import (
    ClassSlots,
    build_panoptic_metadata,
    class_slots,
    num_classes_from_metadata,
)
from .register_panoptic import load_panoptic_json, register_panoptic_dataset

__all__ = [
    "ClassSlots",
    "build_panoptic_metadata",
    "class_slots",
    "num_classes_from_metadata",
    "load_panoptic_json",
    "register_panoptic_dataset",
]
