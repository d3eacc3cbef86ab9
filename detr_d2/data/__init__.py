"""Data: panoptic dataset registration, the DETR dataset mapper, augmentations and panoptic I/O.

The training/evaluation path only: the offline annotation tools (format converters, stuff from a
model) are in :mod:`detr_d2.annotation`.
"""

from . import dataset_mappers, datasets, panoptic_io, transforms  # noqa: F401
from .dataset_mappers import DetrPanopticDatasetMapper
from .datasets import register_panoptic_dataset

__all__ = ["DetrPanopticDatasetMapper", "register_panoptic_dataset"]
