"""Offline annotation tools (not used by training or evaluation; not imported by ``detr_d2``):

- ``detection_to_panoptic``: COCO detection JSON (polygons / RLE) -> COCO panoptic PNGs + JSON;
- ``panoptic_to_detection``: COCO panoptic -> COCO instances JSON (RLE);
- ``stuff_from_model`` (+ ``stuff_map``): thing annotations + a panoptic model's stuff -> panoptic;
- ``worker_pool``: the one worker pool they share.

Used by ``tools/convert_detection_to_panoptic.py``, ``tools/convert_panoptic_to_detection.py`` and
``tools/add_stuff_from_model.py``.
"""

from .detection_to_panoptic import convert_detection_to_panoptic
from .panoptic_to_detection import convert_panoptic_to_detection
from .stuff_from_model import add_stuff_from_model

__all__ = [
    "add_stuff_from_model",
    "convert_detection_to_panoptic",
    "convert_panoptic_to_detection",
]
