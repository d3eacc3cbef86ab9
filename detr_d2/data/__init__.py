"""Data: panoptic dataset registration, the DETR dataset mapper, augmentations and panoptic I/O.

The offline format converters (``detr_d2.data.panoptic_conversion``, used by ``tools/convert_*``)
are not imported here.
"""

from . import dataset_mappers, datasets, panoptic_io, transforms  # noqa: F401  # noqa: F401
from .dataset_mappers import DetrPanopticDatasetMapper
from .datasets import register_panoptic_dataset

__all__ = ["DetrPanopticDatasetMapper", "register_panoptic_dataset"]
