"""A drop-in, in-process replacement for Detectron2's ``COCOPanopticEvaluator``.

Same inputs and the same PQ/SQ/RQ numbers as ``panopticapi.evaluation.pq_compute`` (All, Things,
Stuff, per class), but predictions are never written to and re-read from PNGs: each image's pair
counts are computed in ``process`` from the model's id map and the GT PNG (decoded once, then
cached), and only small per-category sums are gathered across workers.
"""
import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from .panoptic_ground_truth import GROUND_TRUTH_CACHE, PanopticGroundTruth
from .panoptic_predictions import PanopticPredictionConverter, encode_panoptic_png
from .panoptic_quality import PQStats, image_pq_stats, pair_intersections, summarize_pq_stats
from .per_class_report import report_panoptic_results

from ..data.panoptic_io import atomic_write_bytes

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
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        *,
        write_predictions: bool = False,
        cache_ground_truth: bool = True,
    ):
        """
        Args:
            dataset_name: a registered COCO-panoptic style dataset (metadata ``panoptic_json``,
                ``panoptic_root``, ``thing/stuff_dataset_id_to_contiguous_id``).
            output_dir: where to write the per-class report (and predictions); None: nowhere.
            write_predictions: also write the standard COCO panoptic predictions,
                ``<output_dir>/predictions.json`` + ``<output_dir>/predictions/*.png``, readable by
                ``panopticapi.evaluation.pq_compute`` (for submissions elsewhere).
            cache_ground_truth: keep decoded GT maps in the process-wide cache for later
                evaluations (bounded, ``GROUND_TRUTH_CACHE.max_bytes``).
        """
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        self._converter = PanopticPredictionConverter(self._metadata)
        self._gt = PanopticGroundTruth.from_metadata(self._metadata, dataset_name)
        self._output_dir = output_dir
        self._write_predictions = bool(write_predictions)
        self._cache = GROUND_TRUTH_CACHE if cache_ground_truth else None
        if self._write_predictions and not output_dir:
            raise ValueError("FastCOCOPanopticEvaluator: write_predictions=True needs an output_dir")
        if self._output_dir is not None:
            PathManager.mkdirs(self._output_dir)
        self.reset()

    def reset(self) -> None:
        self._image_stats: List[tuple] = []  # (image_id, PQStats)
        self._predictions: List[Dict[str, Any]] = []  # only with write_predictions
        self._unknown_images = 0

    def process(self, inputs, outputs) -> None:
        for input, output in zip(inputs, outputs):
            id_map, segments_info = self._converter(output["panoptic_seg"])
            image_id = input["image_id"]
            if self._write_predictions:
                file_name = os.path.splitext(os.path.basename(input["file_name"]))[0] + ".png"
                self._predictions.append({
                    "image_id": image_id,
                    "file_name": file_name,
                    "png_string": encode_panoptic_png(id_map),
                    "segments_info": segments_info,
                })
            gt_ann = self._gt.by_image_id.get(image_id)
            if gt_ann is None:  # pq_compute ignores predictions of images without GT
                self._unknown_images += 1
                continue
            gt_map = self._gt.id_map(gt_ann, self._cache)
            try:
                gt_ids, pred_ids, counts = pair_intersections(gt_map, id_map)
            except ValueError as e:
                raise ValueError(
                    f"image {image_id} ({input.get('file_name')}): {e} (ground truth "
                    f"{self._gt.png_path(gt_ann)})"
                ) from e
            stats = image_pq_stats(gt_ids, pred_ids, counts, gt_ann["segments_info"], segments_info,
                                   self._gt.categories, image_id)
            self._image_stats.append((image_id, stats))

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
        comm.synchronize()
        image_stats = list(itertools.chain(*comm.gather(self._image_stats)))
        predictions = list(itertools.chain(*comm.gather(self._predictions)))
        unknown = sum(comm.gather(self._unknown_images))
        if not comm.is_main_process():
            return None

        if self._write_predictions:
            self._write_prediction_files(predictions)
        if unknown:
            logger.warning(f"{unknown} predictions are for images without ground truth in "
                           f"{self._gt.panoptic_json}; they are ignored (as pq_compute does).")
        if not image_stats:
            logger.warning("[FastCOCOPanopticEvaluator] Did not receive valid predictions.")
            return OrderedDict()
        per_image = dict(image_stats)  # the last prediction of an image wins, as in pq_compute
        missing = [a["image_id"] for a in self._gt.annotations if a["image_id"] not in per_image]
        if missing:
            raise ValueError(
                f"no prediction for {len(missing)} of the {len(self._gt.annotations)} images of "
                f"{self._gt.panoptic_json} (e.g. image ids {missing[:5]}); pq_compute needs one per "
                f"ground-truth image (dataset {self._dataset_name!r})"
            )
        total = PQStats()
        for ann in self._gt.annotations:
            total += per_image[ann["image_id"]]
        pq_res = summarize_pq_stats(total, self._gt.categories)
        return report_panoptic_results(pq_res, total, self._gt.categories, self._output_dir)
