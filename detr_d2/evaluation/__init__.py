"""Panoptic evaluation: an in-process PQ evaluator (panopticapi's numbers, much faster) and
Detectron2's ``COCOPanopticEvaluator`` with per-class results; ``build_detr_evaluator`` picks the
evaluators for a config and dataset."""

from .build import PANOPTIC_EVALUATORS, build_detr_evaluator, build_panoptic_evaluator
from .fast_panoptic_evaluation import FastCOCOPanopticEvaluator
from .panoptic_evaluation import COCOPanopticEvaluatorWithPerClass
from .panoptic_ground_truth import GROUND_TRUTH_CACHE
from .panoptic_quality import PQStats, summarize_pq_stats

__all__ = [
    "FastCOCOPanopticEvaluator",
    "COCOPanopticEvaluatorWithPerClass",
    "PANOPTIC_EVALUATORS",
    "build_panoptic_evaluator",
    "build_detr_evaluator",
    "GROUND_TRUTH_CACHE",
    "PQStats",
    "summarize_pq_stats",
]
