"""Detectron2's ``COCOPanopticEvaluator`` that keeps panopticapi's per-class results.

Detectron2 writes the predictions as PNG + JSON, runs ``panopticapi.evaluation.pq_compute`` and
keeps only the All/Things/Stuff averages; ``pq_compute`` also raises ``ZeroDivisionError`` when a
group has no category (e.g. a dataset without stuff). This subclass runs the same panopticapi
computation (``pq_compute_multi_core`` on the same files, the core of ``pq_compute``), keeps the
per-category statistics and reports them like :class:`FastCOCOPanopticEvaluator`.
"""

import contextlib
import io
import itertools
import json
import logging
import os
import tempfile
from collections import OrderedDict
from typing import Any, Dict, Iterable, Optional, Tuple

from detectron2.evaluation import COCOPanopticEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..data.panoptic_io import prediction_png_name
from .panoptic_ground_truth import PanopticGroundTruth
from .panoptic_quality import PQStats, categories_by_id, summarize_pq_stats
from .per_class_report import report_panoptic_results

__all__ = ["COCOPanopticEvaluatorWithPerClass", "panopticapi_pq_stats"]

logger = logging.getLogger(__name__)


def panopticapi_pq_stats(
    gt_json_file: str,
    pred_json_file: str,
    gt_folder: str,
    pred_folder: str,
    skip_image_ids: Iterable[Any] = (),
) -> Tuple[PQStats, "OrderedDict[int, Dict]"]:
    """panopticapi's per-category statistics for a GT and a prediction JSON + PNG folder.

    Does what ``pq_compute`` does up to the averages (same file loading, same image matching and
    "no prediction" error, ``pq_compute_multi_core``) and returns ``(PQStats, categories)`` instead.
    GT images in ``skip_image_ids`` are left out.
    """
    from panopticapi.evaluation import pq_compute_multi_core

    with open(gt_json_file, "r") as f:
        gt_json = json.load(f)
    with open(pred_json_file, "r") as f:
        pred_json = json.load(f)
    categories = categories_by_id(gt_json["categories"])
    pred_annotations = {el["image_id"]: el for el in pred_json["annotations"]}
    matched = []
    skip = set(skip_image_ids)
    for gt_ann in gt_json["annotations"]:
        image_id = gt_ann["image_id"]
        if image_id in skip:
            continue
        if image_id not in pred_annotations:
            raise Exception("no prediction for the image with id: {}".format(image_id))
        matched.append((gt_ann, pred_annotations[image_id]))
    with contextlib.redirect_stdout(io.StringIO()):
        pq_stat = pq_compute_multi_core(matched, gt_folder, pred_folder, dict(categories))
    return PQStats.from_panopticapi(pq_stat), categories


class COCOPanopticEvaluatorWithPerClass(COCOPanopticEvaluator):
    """``COCOPanopticEvaluator`` plus per-class PQ/SQ/RQ (table, ``PQ-<class>`` results,
    ``panoptic_per_class.json`` and ``panoptic_per_class_pq.png`` in ``output_dir``).

    Same constructor and ``process`` as Detectron2's; ``evaluate`` writes the same
    ``predictions.json`` and returns the same PQ/SQ/RQ numbers. A group with no category gives
    NaN instead of the ``ZeroDivisionError`` of ``pq_compute``.
    """

    def evaluate(self) -> Optional["OrderedDict[str, Dict[str, float]]"]:
        comm.synchronize()
        self._predictions = comm.gather(self._predictions)
        self._predictions = list(itertools.chain(*self._predictions))
        if not comm.is_main_process():
            return None

        # PanopticApi requires local files
        gt_json = PathManager.get_local_path(self._metadata.panoptic_json)
        gt_folder = PathManager.get_local_path(self._metadata.panoptic_root)

        with tempfile.TemporaryDirectory(prefix="panoptic_eval") as pred_dir:
            logger.info("Writing all panoptic predictions to {} ...".format(pred_dir))
            for p in self._predictions:
                # Detectron2 names a PNG by the image's stem: two images a/0.jpg and b/0.jpg
                # would share one file; image ids are unique.
                p["file_name"] = prediction_png_name(p["image_id"])
                with open(os.path.join(pred_dir, p["file_name"]), "wb") as f:
                    f.write(p.pop("png_string"))

            with open(gt_json, "r") as f:
                json_data = json.load(f)
            json_data["annotations"] = self._predictions

            output_dir = self._output_dir or pred_dir
            predictions_json = os.path.join(output_dir, "predictions.json")
            with PathManager.open(predictions_json, "w") as f:
                f.write(json.dumps(json_data))

            gt = PanopticGroundTruth(gt_json, gt_folder)
            skipped = gt.unpredicted_images(
                {p["image_id"] for p in self._predictions}, self._metadata.name
            )
            stats, categories = panopticapi_pq_stats(
                gt_json, PathManager.get_local_path(predictions_json), gt_folder, pred_dir, skipped
            )

        pq_res = summarize_pq_stats(stats, categories)
        return report_panoptic_results(pq_res, stats, categories, self._output_dir)
