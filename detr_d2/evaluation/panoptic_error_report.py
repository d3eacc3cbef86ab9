"""Write a finished panoptic error analysis: printed table, JSON, bar chart, worst-image pictures.

Used by the evaluator's ``TEST.PANOPTIC_ERROR_ANALYSIS`` option and ``tools/analyze_panoptic.py``.
Outputs (under ``output_dir``): ``panoptic_errors.json``, ``panoptic_errors_pq_lost.png`` and
``panoptic_errors_worst/<rank>_<image id>.png``.
"""

import logging
import os
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np

from ..utils.atomic_io import atomic_directory, atomic_write_json
from .panoptic_error_analysis import PanopticErrorAnalysis, WorstImage, format_error_table
from .panoptic_error_plots import draw_worst_image, plot_pq_lost_per_cause
from .panoptic_ground_truth import PanopticGroundTruth
from .panoptic_quality import PQStats

__all__ = [
    "ERRORS_JSON",
    "ERRORS_PLOT",
    "WORST_DIR",
    "categories_metadata",
    "report_error_analysis",
]

logger = logging.getLogger(__name__)

ERRORS_JSON = "panoptic_errors.json"
ERRORS_PLOT = "panoptic_errors_pq_lost.png"
WORST_DIR = "panoptic_errors_worst"


def _read_rgb(path: str) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def report_error_analysis(
    analysis: PanopticErrorAnalysis,
    total: PQStats,
    gt: PanopticGroundTruth,
    metadata: Any,
    output_dir: Optional[str],
    image_path: Optional[Callable[[Any, Optional[str]], Optional[str]]] = None,
    print_fn: Callable[[str], None] = logger.info,
) -> Dict[str, Any]:
    """Print the table; with ``output_dir`` write the JSON, the chart and the worst images.

    ``image_path(image_id, file_name)`` gives an image's file (default: the ``file_name`` the
    evaluator saw); an image that cannot be read is drawn without its picture (gray panel).
    Returns the result dict (:meth:`PanopticErrorAnalysis.result`).
    """
    result = analysis.result(total)
    print_fn(format_error_table(result))
    if not output_dir:
        return result
    os.makedirs(output_dir, exist_ok=True)
    atomic_write_json(os.path.join(output_dir, ERRORS_JSON), result)
    plot_pq_lost_per_cause(os.path.join(output_dir, ERRORS_PLOT), result)
    worst = analysis.worst()
    # The folder is replaced as a whole, so no picture of an earlier evaluation stays behind.
    worst_path = os.path.join(output_dir, WORST_DIR)
    if worst or os.path.lexists(worst_path):
        with atomic_directory(worst_path, overwrite=True) as worst_dir:
            for rank, item in enumerate(worst, start=1):
                _draw(item, rank, worst_dir, gt, metadata, image_path)
    print_fn(
        f"Error analysis written to {os.path.join(output_dir, ERRORS_JSON)}, {ERRORS_PLOT} and "
        f"{len(worst)} worst images in {WORST_DIR}/"
    )
    return result


def _draw(
    item: WorstImage,
    rank: int,
    worst_dir: str,
    gt: PanopticGroundTruth,
    metadata: Any,
    image_path: Optional[Callable[[Any, Optional[str]], Optional[str]]],
) -> None:
    """Draw one worst image (its GT read again from the PNG) into ``worst_dir``."""
    ann = gt.by_image_id[item.image_id]
    gt_map = gt.id_map(ann, None).to_id_map()
    path = image_path(item.image_id, item.file_name) if image_path else item.file_name
    if path and os.path.isfile(path):
        image = _read_rgb(path)
    else:
        logger.warning(f"image {item.image_id}: no image file ({path}); drawn on gray")
        image = np.full(gt_map.shape + (3,), 128, np.uint8)
    if image.shape[:2] != gt_map.shape:
        logger.warning(
            f"image {item.image_id}: {path} is {image.shape[:2]}, the ground truth "
            f"{gt_map.shape}; drawn on gray"
        )
        image = np.full(gt_map.shape + (3,), 128, np.uint8)
    out = os.path.join(worst_dir, f"{rank:02d}_{_safe(item.image_id)}.png")
    draw_worst_image(out, item, image, gt_map, ann["segments_info"], metadata, gt.categories, rank)


def _safe(image_id: Any) -> str:
    text = str(image_id)
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:80]


def categories_metadata(categories: Mapping[int, Mapping[str, Any]]) -> Any:
    """Visualizer metadata for a GT JSON's categories (the standard panoptic metadata)."""
    from detectron2.data.catalog import Metadata

    from ..data.datasets.panoptic_metadata import build_panoptic_metadata

    meta = build_panoptic_metadata(list(categories.values()), "categories")
    meta.pop("categories")
    return Metadata(**meta)
