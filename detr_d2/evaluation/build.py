"""The evaluator(s) for a dataset and config: :func:`build_detr_evaluator` (what ``DetrTrainer``
uses; for any Detectron2 loop with ``inference_on_dataset``).

Dispatches on the dataset's ``evaluator_type`` as Detectron2's ``tools/train_net.py``
(facebookresearch/detectron2 at 02b5c4e) does, without its ``SemSegEvaluator`` for panoptic
datasets (which need ``sem_seg_file_name``): semantic evaluation only with ``TEST.SEMANTIC_ON``
and a ``sem_seg_root``.
"""

import os
from typing import Any, List, Optional

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators, SemSegEvaluator

from ..config_rules import validate_detr_config
from ..data.datasets.register_from_file import register_datasets_from_config
from .fast_panoptic_evaluation import FastCOCOPanopticEvaluator
from .panoptic_evaluation import COCOPanopticEvaluatorWithPerClass
from .things_coco_evaluation import PanopticThingsCOCOEvaluator

__all__ = ["PANOPTIC_EVALUATORS", "build_panoptic_evaluator", "build_detr_evaluator"]

# Values of cfg.TEST.PANOPTIC_EVALUATOR.
PANOPTIC_EVALUATORS = {
    "in_process": FastCOCOPanopticEvaluator,
    "panopticapi": COCOPanopticEvaluatorWithPerClass,
}


def build_panoptic_evaluator(
    kind: str,
    dataset_name: str,
    output_dir: Optional[str] = None,
    write_predictions: bool = False,
    num_workers: int = 2,
    error_analysis: bool = False,
    worst_images: int = 8,
) -> DatasetEvaluator:
    """The panoptic evaluator named by ``kind`` ("in_process": PQ computed in process, same numbers
    as panopticapi; "panopticapi": Detectron2's ``COCOPanopticEvaluator`` (PNGs + ``pq_compute``) +
    per-class results). ``write_predictions`` (PNG + JSON kept in ``output_dir``) and
    ``num_workers`` (background threads) and ``error_analysis`` (with ``worst_images`` drawn;
    docs/error_analysis.md) are "in_process" options."""
    if kind not in PANOPTIC_EVALUATORS:
        raise ValueError(
            f"unknown panoptic evaluator {kind!r} (TEST.PANOPTIC_EVALUATOR); choose from "
            f"{sorted(PANOPTIC_EVALUATORS)}"
        )
    if kind == "in_process":
        return FastCOCOPanopticEvaluator(
            dataset_name,
            output_dir,
            write_predictions=write_predictions,
            num_workers=num_workers,
            error_analysis=error_analysis,
            worst_images=worst_images,
        )
    if error_analysis:  # the config rule: detr_d2.config_rules (TEST.PANOPTIC_ERROR_ANALYSIS)
        raise ValueError("error_analysis is an option of the 'in_process' panoptic evaluator")
    if write_predictions:  # the config rule: detr_d2.config_rules (TEST.PANOPTIC_WRITE_PREDICTIONS)
        raise ValueError("write_predictions is an option of the 'in_process' panoptic evaluator")
    return COCOPanopticEvaluatorWithPerClass(dataset_name, output_dir)


def build_detr_evaluator(
    cfg: Any, dataset_name: str, output_folder: Optional[str] = None
) -> DatasetEvaluator:
    """Evaluators for ``dataset_name`` (registered from ``DATASETS.REGISTER_FILES`` first):
    ``coco_panoptic_seg`` -> the in-process PQ evaluator (``TEST.PANOPTIC_EVALUATOR in_process``)
    or Detectron2's ``COCOPanopticEvaluator`` with per-class results (``panopticapi``); plus
    ``COCOEvaluator`` for things when instance outputs are on and the dataset has an instance JSON,
    and ``SemSegEvaluator`` when semantic outputs are on and it has ``sem_seg_root``.
    ``output_folder`` defaults to ``OUTPUT_DIR/inference/<dataset_name>``."""
    validate_detr_config(cfg)
    register_datasets_from_config(cfg)
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    ev_type = getattr(meta, "evaluator_type", None)
    evaluators: List[DatasetEvaluator] = []
    t = cfg.TEST
    if (
        ev_type in ("coco_panoptic_seg", "coco_panoptic_seg_standard")
        and cfg.MODEL.MASK_ON
        and t.PANOPTIC_ON
    ):
        evaluators.append(
            build_panoptic_evaluator(
                t.PANOPTIC_EVALUATOR,
                dataset_name,
                output_folder,
                t.PANOPTIC_WRITE_PREDICTIONS,
                t.PANOPTIC_EVAL_WORKERS,
                t.PANOPTIC_ERROR_ANALYSIS,
                t.PANOPTIC_ERROR_WORST_IMAGES,
            )
        )
    if t.INSTANCE_ON and getattr(meta, "json_file", None) and os.path.exists(meta.json_file):
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        # COCOEvaluator on the things' view of the (standard panoptic) metadata
        evaluators.append(PanopticThingsCOCOEvaluator(dataset_name, tasks, True, output_folder))
    if t.SEMANTIC_ON and cfg.MODEL.MASK_ON and getattr(meta, "sem_seg_root", None):
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    if not evaluators:
        raise NotImplementedError(
            f"no evaluator for dataset '{dataset_name}' (evaluator_type={ev_type!r}, "
            f"MODEL.MASK_ON={cfg.MODEL.MASK_ON}); panoptic datasets need evaluator_type "
            "'coco_panoptic_seg'"
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
