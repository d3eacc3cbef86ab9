"""Dataset mappers (Detectron2 ``DatasetMapper``-style, ``@configurable``)."""

from .detr_panoptic_dataset_mapper import DetrPanopticDatasetMapper

__all__ = ["DetrPanopticDatasetMapper"]
