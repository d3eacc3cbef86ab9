"""Panoptic evaluation: an in-process PQ evaluator (panopticapi's numbers, much faster) and
Detectron2's
``COCOPanopticEvaluator`` with per-class results."""

from typing import Optional

from detectron2.evaluation import DatasetEvaluator

from .fast_panoptic_evaluation import FastCOCOPanopticEvaluator
from .panoptic_evaluation import COCOPanopticEvaluatorWithPerClass
from .panoptic_ground_truth import GROUND_TRUTH_CACHE
from .panoptic_quality import PQStats, summarize_pq_stats

__all__ = [
    "FastCOCOPanopticEvaluator",
    "COCOPanopticEvaluatorWithPerClass",
    "PANOPTIC_EVALUATORS",
    "build_panoptic_evaluator",
    "GROUND_TRUTH_CACHE",
    "PQStats",
    "summarize_pq_stats",
]

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
    ``num_workers`` (background
    threads) and ``error_analysis`` (with ``worst_images`` drawn; docs/error_analysis.md) are
    "in_process" options."""
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
