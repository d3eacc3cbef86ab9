"""Pictures of the panoptic error analysis: a bar chart of the PQ each cause loses, and the worst
images side by side (image | ground truth | prediction | errors coloured by cause, with a legend).

The panoptic panels and the error masks are drawn with Detectron2's ``Visualizer``
(``draw_panoptic_seg``, ``draw_binary_mask``); panels are put together with matplotlib. The chart,
written at every evaluation, is drawn with Pillow (a few ms). Files are written atomically.
"""

import functools
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


@functools.lru_cache(maxsize=None)
def _font(size: int):
    """DejaVu Sans (shipped with matplotlib) at ``size`` pixels; Pillow's own font without it."""
    from PIL import ImageFont

    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except (ImportError, OSError, ValueError):
        return ImageFont.load_default()


def _nice_step(top: float, ticks: int = 5) -> float:
    """A 1/2/5 x 10^k step that cuts ``[0, top]`` into about ``ticks`` intervals."""
    raw = max(top, 1e-9) / ticks
    base = 10.0 ** np.floor(np.log10(raw))
    return float(next(m * base for m in (1, 2, 5, 10) if m * base >= raw))


def _tint(rgb: Sequence[float], alpha: float) -> tuple:
    """``rgb`` (0..1) at ``alpha`` over white, as 0..255 integers."""
    return tuple(int(round(255 * (alpha * c + 1 - alpha))) for c in rgb)


def plot_pq_lost_per_cause(path: str, result: Mapping[str, Any]) -> None:
    """Bars of the PQ gain of fixing each cause (All solid, Things and Stuff lighter), largest
    first, with each cause's FP / FN counts under its bars; an 800x400 PNG.

    Drawn with Pillow rather than matplotlib: the chart is written at every evaluation, and a
    matplotlib figure costs 35 ms empty and about 80 ms with these bars (more than the analysis of
    100 images); this one takes about 13 ms (``python -m benchmarks.error_analysis``).
    """
    from PIL import Image, ImageDraw

    causes = sorted(result["causes"].items(), key=lambda kv: -(kv[1]["PQ_gain"] or 0.0))
    width, height = 800, 400
    left, right, top, bottom = 62, 14, 40, 78  # plot area margins (pixels)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    tiny, small, medium = _font(10), _font(11), _font(13)
    pq, fixed = result["PQ"], result["all_errors_fixed"]["PQ"]
    title = f"PQ lost per error cause ({result['images']} images"
    title += (
        f"; PQ {pq:.1f}, {fixed:.1f} with all errors fixed)" if None not in (pq, fixed) else ")"
    )
    draw.text((width / 2, 12), title, fill="black", font=medium, anchor="mt")

    series = (("PQ_gain", "All", 1.0), ("PQ_th_gain", "Things", 0.6), ("PQ_st_gain", "Stuff", 0.35))
    y_max = max([v[k] or 0.0 for _, v in causes for k, _, _ in series] + [0.0])
    step = _nice_step(y_max if y_max > 0 else 1.0)
    y_top = step * max(1, int(np.ceil(y_max / step - 1e-9)))
    x0, x1, y0, y1 = left, width - right, height - bottom, top  # y0: the axis (gain 0)

    def y_of(v: float) -> float:
        return y0 - (y0 - y1) * v / y_top

    for i in range(int(round(y_top / step)) + 1):  # grid lines and y tick labels
        y = y_of(i * step)
        draw.line([(x0, y), (x1, y)], fill=(225, 225, 225))
        draw.text((x0 - 5, y), f"{i * step:g}", fill="black", font=small, anchor="rm")
    label = Image.new("L", (y0 - y1, 16), 255)  # the y axis label, drawn sideways
    ImageDraw.Draw(label).text(
        ((y0 - y1) / 2, 8), "PQ gain if fixed (points)", fill=0, font=small, anchor="mm"
    )
    img.paste((0, 0, 0), (4, y1), label.rotate(90, expand=True).point(lambda v: 255 - v))

    group = (x1 - x0) / max(1, len(causes))
    bar = group * 0.26
    for i, (cause, v) in enumerate(causes):
        center = x0 + group * (i + 0.5)
        for j, (key, _, alpha) in enumerate(series):
            value = v[key] or 0.0
            bx = center + (j - 1.5) * bar
            if value > 0:
                draw.rectangle(
                    [bx, y_of(value), bx + bar, y0],
                    fill=_tint(CAUSE_COLORS[cause], alpha),
                    outline="black",
                )
        if v["PQ_gain"]:  # the All gain, above the group's tallest bar
            tallest = max(v[key] or 0.0 for key, _, _ in series)
            draw.text(
                (center, y_of(tallest) - 3),
                f"All +{v['PQ_gain']:.1f}",
                fill="black",
                font=small,
                anchor="md",
            )
        draw.text((center, y0 + 6), cause, fill="black", font=tiny, anchor="ma")
        draw.text(
            (center, y0 + 21),
            f"{v['fp']} FP / {v['fn']} FN",
            fill=(80, 80, 80),
            font=small,
            anchor="ma",
        )
    draw.line([(x0, y0), (x1, y0)], fill="black")
    draw.line([(x0, y0), (x0, y1)], fill="black")

    lx, ly = x1 - 230, height - 26  # legend: the bar shades, under the cause labels
    draw.text((lx - 6, ly + 6), "bars:", fill="black", font=small, anchor="rm")
    for k, (_, name, alpha) in enumerate(series):
        sx = lx + k * 78
        draw.rectangle(
            [sx, ly, sx + 14, ly + 12], fill=_tint((0.4, 0.4, 0.4), alpha), outline="black"
        )
        draw.text((sx + 19, ly + 6), name, fill="black", font=small, anchor="lm")
    atomic_write(path, lambda f: img.save(f, format="PNG"))


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
