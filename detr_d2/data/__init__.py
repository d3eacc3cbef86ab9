"""Data: panoptic dataset registration, the DETR dataset mapper, augmentations, converters."""

from . import panoptic_io, transforms  # noqa: F401
from . import datasets, dataset_mappers, panoptic_conversion  # noqa: F401
from .dataset_mappers import DetrPanopticDatasetMapper
from .datasets import register_panoptic_dataset

__all__ = ["DetrPanopticDatasetMapper", "register_panoptic_dataset"]
