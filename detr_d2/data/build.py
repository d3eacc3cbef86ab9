"""Detectron2 data loaders with detr_d2's dataset mapper, for ``DetrTrainer`` and any Detectron2
training loop: :func:`build_detr_train_loader`, :func:`build_detr_test_loader`.

Detectron2's own ``build_detection_train_loader(cfg)`` uses its ``DatasetMapper``, which gives
panoptic samples no ``instances``; these builders pass the mapper named by
``INPUT.DATASET_MAPPER_NAME`` (``detr_panoptic``, or ``default`` for Detectron2's). The datasets of
``DATASETS.REGISTER_FILES`` are registered first (idempotent). Shapes follow
``detectron2/data/build.py`` (facebookresearch/detectron2 at 02b5c4e).
"""

from typing import Any, Optional

from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)

from .datasets.register_from_file import register_datasets_from_config

__all__ = ["build_detr_mapper", "build_detr_train_loader", "build_detr_test_loader"]


def build_detr_mapper(cfg: Any, is_train: bool) -> Optional[Any]:
    """The mapper of ``INPUT.DATASET_MAPPER_NAME``: ``DetrPanopticDatasetMapper(cfg, is_train)``
    for ``detr_panoptic``; None (Detectron2's ``DatasetMapper``) for ``default``."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name == "detr_panoptic":
        from .dataset_mappers import DetrPanopticDatasetMapper

        return DetrPanopticDatasetMapper(cfg, is_train)
    if name == "default":
        return None
    raise ValueError(
        f"INPUT.DATASET_MAPPER_NAME must be 'detr_panoptic' or 'default', got {name!r}"
    )


def build_detr_train_loader(cfg: Any):
    """Detectron2's infinite training loader over ``DATASETS.TRAIN`` with detr_d2's mapper: batches
    of ``SOLVER.IMS_PER_BATCH`` dicts with ``image`` (C, H, W) and ``instances``."""
    register_datasets_from_config(cfg)
    mapper = build_detr_mapper(cfg, True)
    dataset = None
    if getattr(mapper, "corrupt_samples", None) is not None:
        # DATALOADER.SKIP_CORRUPT_SAMPLES: the dicts Detectron2's _train_loader_from_config would
        # build (same arguments), so the mapper knows their number and can stop when all of them
        # are corrupt (MapDataset would fail with "Sample larger than population").
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
            if cfg.MODEL.KEYPOINT_ON
            else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        mapper.corrupt_samples.dataset_size = len(dataset)
    return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)


def build_detr_test_loader(cfg: Any, dataset_name: str):
    """Detectron2's inference loader over ``dataset_name`` with detr_d2's test-time mapper."""
    register_datasets_from_config(cfg)
    return build_detection_test_loader(cfg, dataset_name, mapper=build_detr_mapper(cfg, False))
