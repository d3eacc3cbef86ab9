"""Pictures of the panoptic error analysis: a bar chart of the PQ each cause loses, and the worst
images side by side (image | ground truth | prediction | errors coloured by cause, with a legend).

The panoptic panels and the error masks are drawn with Detectron2's ``Visualizer``
(``draw_panoptic_seg``, ``draw_binary_mask``); panels are put together with matplotlib. Files are
written atomically.
"""

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..utils.atomic_io import atomic_write
from .panoptic_error_analysis import WorstImage

__all__ = ["CAUSE_COLORS", "plot_pq_lost_per_cause", "draw_worst_image"]

# One colour per cause (RGB 0..1), shared by the chart and the error panels.
CAUSE_COLORS: Dict[str, tuple] = {
    "wrong_class": (0.89, 0.10, 0.11),
    "thing_stuff": (0.60, 0.31, 0.64),
    "merge": (1.00, 0.50, 0.00),
    "duplicate": (1.00, 1.00, 0.20),
    "split": (0.65, 0.34, 0.16),
    "poor_mask": (0.22, 0.49, 0.72),
    "class_and_mask": (0.97, 0.51, 0.75),
    "background": (0.30, 0.69, 0.29),
    "missed": (0.10, 0.10, 0.10),
}
_MATCHED = (1.0, 1.0, 1.0)
_IGNORED = (0.6, 0.6, 0.6)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png"))


def plot_pq_lost_per_cause(path: str, result: Mapping[str, Any]) -> None:
    """Bars of the PQ gain of fixing each cause (All, Things, Stuff), largest first."""
    causes = sorted(result["causes"].items(), key=lambda kv: -(kv[1]["PQ_gain"] or 0.0))
    fig = _figure(8.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(causes))
    for offset, key, label, alpha in (
        (-0.27, "PQ_gain", "All", 1.0),
        (0.0, "PQ_th_gain", "Things", 0.6),
        (0.27, "PQ_st_gain", "Stuff", 0.35),
    ):
        values = [v[key] or 0.0 for _, v in causes]
        colors = [CAUSE_COLORS[c] for c, _ in causes]
        ax.bar(x + offset, values, width=0.27, color=colors, alpha=alpha, edgecolor="black")
        ax.bar([0], [0], color="white", edgecolor="black", alpha=alpha, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(
        [f"{c}\n{v['fp']} FP / {v['fn']} FN" for c, v in causes], rotation=30, fontsize=7
    )
    ax.set_ylabel("PQ gain if fixed (points)")
    pq = result["PQ"]
    fixed = result["all_errors_fixed"]["PQ"]
    ax.set_title(
        f"PQ lost per error cause ({result['images']} images; PQ {pq:.1f}, "
        f"{fixed:.1f} with all errors fixed)"
        if pq is not None and fixed is not None
        else "PQ lost per error cause"
    )
    ax.legend(fontsize=8, title="bars: All / Things / Stuff", title_fontsize=7)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.91, bottom=0.24)  # fixed: tight_layout is slow
    _save(fig, path)


def _contiguous_segments(
    segments: Sequence[Mapping[str, Any]], metadata: Any, categories: Mapping[int, Any]
) -> List[Dict[str, Any]]:
    """Segments with the Visualizer's contiguous category ids and ``isthing``."""
    things = metadata.thing_dataset_id_to_contiguous_id
    stuff = metadata.stuff_dataset_id_to_contiguous_id
    out = []
    for s in segments:
        isthing = categories[s["category_id"]]["isthing"] == 1
        mapping = things if isthing else stuff
        out.append(
            {
                "id": int(s["id"]),
                "category_id": mapping[s["category_id"]],
                "isthing": isthing,
                "iscrowd": int(s.get("iscrowd", 0)),
            }
        )
    return out


def draw_worst_image(
    path: str,
    worst: WorstImage,
    image_rgb: np.ndarray,
    gt_id_map: np.ndarray,
    gt_segments: Sequence[Mapping[str, Any]],
    metadata: Any,
    categories: Mapping[int, Any],
    rank: Optional[int] = None,
) -> None:
    """One row: image | ground truth | prediction | errors (FN: ground-truth masks, FP: predicted
    masks, coloured by cause; matched segments white, ignored predictions grey), legend below."""
    import torch
    from detectron2.utils.visualizer import Visualizer
    from matplotlib.patches import Patch

    pred_id_map = worst.prediction.to_id_map()
    height, width = gt_id_map.shape
    if image_rgb.shape[:2] != (height, width):
        raise ValueError(
            f"image {worst.image_id}: image {image_rgb.shape[:2]} and ground truth "
            f"{(height, width)} differ in size"
        )
    scale = max(1.0, 320.0 / max(height, width))
    panels = [image_rgb]
    for ids, segments in ((gt_id_map, gt_segments), (pred_id_map, worst.pred_segments)):
        vis = Visualizer(image_rgb, metadata, scale=scale)
        listed = _contiguous_segments(segments, metadata, categories)
        drawn = vis.draw_panoptic_seg(torch.from_numpy(ids.astype(np.int64)), listed, alpha=0.6)
        panels.append(drawn.get_image())
    vis = Visualizer((image_rgb * 0.5).astype(np.uint8), metadata, scale=scale)
    for gt_id, pred_id in worst.matches:
        vis.draw_binary_mask(gt_id_map == gt_id, color=_MATCHED, alpha=0.25, area_threshold=0)
    for pred_id in worst.ignored:
        vis.draw_binary_mask(pred_id_map == pred_id, color=_IGNORED, alpha=0.4, area_threshold=0)
    for gt_id, (cause, _) in worst.fn.items():
        color = CAUSE_COLORS[cause]
        mask = gt_id_map == gt_id
        vis.draw_binary_mask(mask, color=color, alpha=0.55, text="FN", area_threshold=0)
    for pred_id, (cause, _) in worst.fp.items():
        color = CAUSE_COLORS[cause]
        mask = pred_id_map == pred_id
        vis.draw_binary_mask(
            mask, color=color, edge_color=(1, 1, 1), alpha=0.55, text="FP", area_threshold=0
        )
    panels.append(vis.output.get_image())

    panel_width = 3.2  # inches; the figure's height follows the image's aspect ratio
    fig_height = panel_width * height / width + 0.9
    fig = _figure(4 * panel_width + 0.2, fig_height)
    titles = ("image", "ground truth", "prediction", "errors (FP: predicted, FN: ground truth)")
    for i, (panel, title) in enumerate(zip(panels, titles)):
        ax = fig.add_subplot(1, 4, i + 1)
        ax.imshow(panel)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    used = sorted({c for c, _ in list(worst.fp.values()) + list(worst.fn.values())})
    handles = [Patch(color=CAUSE_COLORS[c], label=c) for c in used]
    handles += [Patch(color=_MATCHED, label="matched (TP)", ec="black")]
    if worst.ignored:
        handles.append(Patch(color=_IGNORED, label="ignored (crowd/VOID)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8)
    name = os.path.basename(worst.file_name) if worst.file_name else ""
    fig.suptitle(
        f"{'#%d  ' % rank if rank is not None else ''}image {worst.image_id} {name}: "
        f"PQ lost {worst.pq_lost:.1f} ({len(worst.fp)} FP, {len(worst.fn)} FN)",
        fontsize=10,
    )
    fig.subplots_adjust(
        left=0.01, right=0.99, top=1 - 0.45 / fig_height, bottom=0.4 / fig_height, wspace=0.03
    )
    _save(fig, path)
