"""A drop-in, in-process replacement for Detectron2's ``COCOPanopticEvaluator``.

Same inputs and the same PQ/SQ/RQ numbers as ``panopticapi.evaluation.pq_compute`` (All, Things,
Stuff, per class), but predictions are never written to and re-read from PNGs: each image's pair
counts are computed from the model's id map and the GT PNG (decoded once, then cached), and only
small per-category sums are gathered across workers. ``process`` hands each image's computation to
background threads, so inside ``inference_on_dataset`` it runs while the model computes the next
batch instead of adding to the evaluation's time.
"""

import itertools
import json
import logging
import os
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Deque, Dict, List, Optional, Tuple

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..data.panoptic_io import (
    PanopticPredictionConverter,
    encode_panoptic_png,
    prediction_png_name,
)
from ..utils.atomic_io import atomic_write_bytes
from .panoptic_error_analysis import PanopticErrorAnalysis
from .panoptic_error_report import report_error_analysis
from .panoptic_errors import classify_errors
from .panoptic_ground_truth import GROUND_TRUTH_CACHE, PanopticGroundTruth
from .panoptic_matching import match_image
from .panoptic_quality import PQStats, pair_intersections, summarize_pq_stats
from .per_class_report import report_panoptic_results

__all__ = ["FastCOCOPanopticEvaluator", "PREDICTIONS_JSON", "PREDICTIONS_DIR"]

logger = logging.getLogger(__name__)

PREDICTIONS_JSON = "predictions.json"
PREDICTIONS_DIR = "predictions"  # panopticapi's default folder for predictions.json


class FastCOCOPanopticEvaluator(DatasetEvaluator):
    """Evaluate Panoptic Quality like ``COCOPanopticEvaluator`` (PanopticAPI rules), in process.

    ``process`` consumes ``output["panoptic_seg"] = (id_map, segments_info or None)`` exactly as
    Detectron2's evaluator does (contiguous ids + ``isthing``, or the ``label_divisor`` encoding).
    ``evaluate`` returns ``{"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", ..., "RQ_st",
    "PQ-<class>"...}}`` in percent, logs Detectron2's table and a per-class table and, with an
    ``output_dir``, writes ``panoptic_per_class.json`` and ``panoptic_per_class_pq.png``.
    It contains a synchronize call and has to be called from all workers.

    With ``num_workers > 0``, ``process`` only converts the output (moving it to the CPU) and queues
    the image; ``num_workers`` threads decode the GT PNG and count the statistics (PNG decoding
    and most numpy work release the GIL) while the caller goes on, e.g. with the next model forward.
    At most ``4 * num_workers`` images wait; a failure (e.g. a prediction of the wrong size) is
    raised by the ``process`` call that collects it (within a few images) or by ``evaluate``.
    The results are the same as with ``num_workers=0`` (all in ``process``).
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        *,
        write_predictions: bool = False,
        cache_ground_truth: bool = True,
        num_workers: int = 2,
        error_analysis: bool = False,
        worst_images: int = 8,
    ):
        """
        Args:
            dataset_name: a registered COCO-panoptic style dataset (metadata ``panoptic_json``,
                ``panoptic_root``, ``thing/stuff_dataset_id_to_contiguous_id``).
            output_dir: where to write the per-class report (and predictions); None: nowhere.
            write_predictions: also write the standard COCO panoptic predictions,
                ``<output_dir>/predictions.json`` + ``<output_dir>/predictions/<image id>.png``,
                readable by ``panopticapi.evaluation.pq_compute`` (for submissions elsewhere).
            cache_ground_truth: keep decoded GT maps in the process-wide cache for later
                evaluations (bounded, ``GROUND_TRUTH_CACHE.max_bytes``).
            num_workers: background threads computing the per-image statistics (0: in ``process``).
            error_analysis: also give every FP/FN its cause from the same per-image matching and
                report them after PQ (:mod:`.panoptic_error_report`; docs/error_analysis.md),
                drawing the ``worst_images`` images with the most PQ lost into ``output_dir``.
        """
        if num_workers < 0:
            raise ValueError(
                f"FastCOCOPanopticEvaluator: num_workers must be >= 0, got {num_workers}"
            )
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        self._converter = PanopticPredictionConverter(self._metadata)
        self._gt = PanopticGroundTruth.from_metadata(self._metadata, dataset_name)
        self._output_dir = output_dir
        self._write_predictions = bool(write_predictions)
        self._cache = GROUND_TRUTH_CACHE if cache_ground_truth else None
        self._num_workers = int(num_workers)
        self._executor: Optional[ThreadPoolExecutor] = None
        self._pending: Deque[Future] = deque()
        self._error_analysis = bool(error_analysis)
        self._worst_images = int(worst_images)
        if self._write_predictions and not output_dir:
            raise ValueError(
                "FastCOCOPanopticEvaluator: write_predictions=True needs an output_dir"
            )
        if self._output_dir is not None:
            PathManager.mkdirs(self._output_dir)
        self.reset()

    def reset(self) -> None:
        self._shutdown()
        self._image_stats: List[Tuple[Any, PQStats]] = []
        self._predictions: List[Dict[str, Any]] = []  # only with write_predictions
        self._unknown_images = 0
        self._analysis: Optional[PanopticErrorAnalysis] = None
        if self._error_analysis:
            self._analysis = PanopticErrorAnalysis(self._gt.categories, self._worst_images)
        if self._num_workers:
            self._executor = ThreadPoolExecutor(self._num_workers, thread_name_prefix="detr_d2_pq")

    def _shutdown(self, wait: bool = False) -> None:
        """Stop the worker threads (``wait``: until they have exited); queued images are dropped."""
        if self._executor is not None:
            self._executor.shutdown(wait=wait, cancel_futures=True)
            self._executor = None
        self._pending.clear()

    def process(self, inputs, outputs) -> None:
        for input, output in zip(inputs, outputs):
            id_map, segments_info = self._converter(output["panoptic_seg"])
            image_id, file_name = input["image_id"], input.get("file_name")
            if self._executor is None:
                self._collect(self._image_result(image_id, file_name, id_map, segments_info))
                continue
            # The caller may reuse the output's memory once process returns: queue a copy.
            id_map = np.array(id_map, copy=True)
            self._pending.append(
                self._executor.submit(
                    self._image_result, image_id, file_name, id_map, segments_info
                )
            )
            self._collect_finished(max_pending=4 * self._num_workers)

    def _collect_finished(self, max_pending: int) -> None:
        """Collect the finished head of the queue, in order, and wait while more than
        ``max_pending`` images are queued; re-raises an image's error."""
        while self._pending and (self._pending[0].done() or len(self._pending) > max_pending):
            self._collect(self._pending.popleft().result())

    def _collect(self, result: Tuple[Any, Optional[PQStats], Any, Any]) -> None:
        image_id, stats, prediction, analysed = result
        if analysed is not None:
            self._analysis.add(image_id, *analysed)
        if prediction is not None:
            self._predictions.append(prediction)
        if stats is None:  # pq_compute ignores predictions of images without GT
            self._unknown_images += 1
        else:
            self._image_stats.append((image_id, stats))

    def _image_result(
        self,
        image_id: Any,
        file_name: Optional[str],
        id_map: np.ndarray,
        segments_info: List[Dict[str, Any]],
    ) -> Tuple[Any, Optional[PQStats], Optional[Dict[str, Any]], Any]:
        """``(image_id, PQStats or None if the image has no GT, prediction to write or None,
        (file_name, ImageMatch, ImageErrors, id_map) with error_analysis or None)``."""
        prediction = None
        if self._write_predictions:
            prediction = {
                "image_id": image_id,
                "file_name": prediction_png_name(image_id),
                "png_string": encode_panoptic_png(id_map),
                "segments_info": segments_info,
            }
        gt_ann = self._gt.by_image_id.get(image_id)
        if gt_ann is None:
            return image_id, None, prediction, None
        gt_map = self._gt.id_map(gt_ann, self._cache)
        try:
            gt_ids, pred_ids, counts = pair_intersections(gt_map, id_map)
        except ValueError as e:
            raise ValueError(
                f"image {image_id} ({file_name}): {e} (ground truth {self._gt.png_path(gt_ann)})"
            ) from e
        match = match_image(
            gt_ids,
            pred_ids,
            counts,
            gt_ann["segments_info"],
            segments_info,
            self._gt.categories,
            image_id,
        )
        analysed = None
        if self._error_analysis:
            errors = classify_errors(match, self._gt.categories)
            analysed = (file_name, match, errors, id_map)
        return image_id, match.stats, prediction, analysed

    def _write_prediction_files(self, predictions: List[Dict[str, Any]]) -> None:
        pred_dir = os.path.join(self._output_dir, PREDICTIONS_DIR)
        os.makedirs(pred_dir, exist_ok=True)
        annotations = []
        for p in predictions:
            p = dict(p)
            atomic_write_bytes(os.path.join(pred_dir, p["file_name"]), p.pop("png_string"))
            annotations.append(p)
        with open(self._gt.panoptic_json, "r") as f:
            json_data = json.load(f)
        json_data["annotations"] = annotations
        json_path = os.path.join(self._output_dir, PREDICTIONS_JSON)
        atomic_write_bytes(json_path, json.dumps(json_data).encode("utf-8"))
        logger.info(f"Wrote {len(annotations)} panoptic predictions to {json_path} and {pred_dir}/")

    def evaluate(self) -> Optional["OrderedDict[str, Dict[str, float]]"]:
        try:
            self._collect_finished(max_pending=0)
        finally:
            self._shutdown(wait=True)
        comm.synchronize()
        image_stats = list(itertools.chain(*comm.gather(self._image_stats)))
        predictions = list(itertools.chain(*comm.gather(self._predictions)))
        unknown = sum(comm.gather(self._unknown_images))
        analyses = comm.gather(self._analysis)
        if not comm.is_main_process():
            return None

        if self._write_predictions:
            self._write_prediction_files(predictions)
        if unknown:
            logger.warning(
                f"{unknown} predictions are for images without ground truth in "
                f"{self._gt.panoptic_json}; they are ignored (as pq_compute does)."
            )
        if not image_stats:
            logger.warning("[FastCOCOPanopticEvaluator] Did not receive valid predictions.")
            return OrderedDict()
        per_image = dict(image_stats)  # the last prediction of an image wins, as in pq_compute
        self._gt.unpredicted_images(
            per_image, self._dataset_name
        )  # raises unless their GT PNG is missing
        total = PQStats()
        for ann in self._gt.annotations:
            if ann["image_id"] in per_image:
                total += per_image[ann["image_id"]]
        pq_res = summarize_pq_stats(total, self._gt.categories)
        results = report_panoptic_results(pq_res, total, self._gt.categories, self._output_dir)
        if self._error_analysis:
            analysis = analyses[0]
            for other in analyses[1:]:
                analysis.merge(other)
            report_error_analysis(analysis, total, self._gt, self._metadata, self._output_dir)
        return results
