"""Training curves from Detectron2's ``metrics.json``: losses, learning rate and PQ/SQ/RQ.

``metrics.json`` is what Detectron2's ``JSONWriter`` appends, one JSON object per line
(``{"iteration": i, "total_loss": ..., "lr": ..., "panoptic_seg/PQ": ...}``). A resumed run appends
to the same file, starting again from its checkpoint's iteration: when the iteration goes back,
the records of the abandoned iterations (from there on) are dropped, so a resumed run is plotted
as one run (records the killed run wrote after its checkpoint and before the resumed run's first
record stay, as they cannot be told apart). A last line still being written is skipped, so the
file can be read while training runs. :class:`TrainingCurvesHook` draws the PNG at the end of
``train_net`` training.
"""

import json
import logging
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..utils.atomic_io import atomic_write

__all__ = [
    "CURVES_PNG",
    "METRICS_JSON",
    "TrainingCurvesHook",
    "load_metrics",
    "plot_training_curves",
    "write_training_curves",
]

logger = logging.getLogger(__name__)

METRICS_JSON = "metrics.json"
CURVES_PNG = "training_curves.png"
MAIN_LOSSES = ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")
_GROUPS = (("", "All"), ("_th", "Things"), ("_st", "Stuff"))


def load_metrics(path: str) -> List[Dict[str, Any]]:
    """The records of ``metrics.json`` as one run: ``[{"iteration": i, key: value, ...}]`` sorted
    by iteration, records of the same iteration merged (later values win)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {METRICS_JSON} at {path} (Detectron2 writes it to OUTPUT_DIR)")
    records: List[Dict[str, Any]] = []
    with open(path, "r", encoding="utf-8") as f:
        lines = f.read().split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number >= len(lines) - 1:  # the last line, maybe still being written
                break
            raise ValueError(f"{path}: line {number} is not JSON ({e.msg})") from e
        if not isinstance(record, dict) or "iteration" not in record:
            raise ValueError(f"{path}: line {number} has no 'iteration'")
        iteration = int(record["iteration"])
        if records and iteration < records[-1]["iteration"]:  # a resume: drop the abandoned part
            records = [r for r in records if r["iteration"] < iteration]
        if records and records[-1]["iteration"] == iteration:
            records[-1].update(record)
        else:
            records.append(dict(record, iteration=iteration))
    return records


def _series(records: Sequence[Dict[str, Any]], key: str) -> Tuple[np.ndarray, np.ndarray]:
    points = [
        (r["iteration"], float(r[key]))
        for r in records
        if isinstance(r.get(key), (int, float)) and math.isfinite(float(r[key]))
    ]
    if not points:
        return np.zeros(0), np.zeros(0)
    it, values = zip(*points)
    return np.asarray(it), np.asarray(values)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` records (shorter at the start)."""
    if values.size == 0 or window <= 1:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, values.size + 1)
    start = np.maximum(idx - window, 0)
    return (csum[idx] - csum[start]) / (idx - start)


def _loss_keys(records: Sequence[Dict[str, Any]]) -> List[str]:
    keys = {k for r in records for k in r if k.startswith("loss_")}
    main = [k for k in MAIN_LOSSES if k in keys]
    # Other terms without a decoder-layer suffix (the _0, _1 ... auxiliary copies are left out).
    other = sorted(k for k in keys if k not in main and not k.rsplit("_", 1)[-1].isdigit())
    return main + other


def plot_training_curves(
    records: Sequence[Dict[str, Any]], path: str, title: str = "", smooth: int = 5
) -> None:
    """Write a PNG: losses (total and each term, smoothed, log scale), learning rate, and
    PQ / SQ / RQ (All, Things, Stuff) at each evaluation (``panoptic_seg/*`` keys)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    last = records[-1]["iteration"] if records else 0
    fig = Figure(figsize=(13, 7.5), dpi=90)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 3)
    ax = fig.add_subplot(grid[0, :2])
    for key in ["total_loss"] + _loss_keys(records):
        it, values = _series(records, key)
        if it.size:
            width = 2.0 if key == "total_loss" else 1.2
            ax.plot(it, _smooth(values, smooth), label=key, linewidth=width)
    if ax.lines and all(line.get_ydata().min() > 0 for line in ax.lines):
        ax.set_yscale("log")
    ax.set_title(f"losses (moving average of {smooth} records; auxiliary decoder layers left out)")
    ax.set_xlabel("iteration")
    if ax.lines:
        ax.legend(fontsize=8, ncol=2)
    ax = fig.add_subplot(grid[0, 2])
    it, values = _series(records, "lr")
    ax.plot(it, values, color="tab:gray")
    ax.set_title("learning rate")
    ax.set_xlabel("iteration")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    evaluated = False
    for col, metric in enumerate(("PQ", "SQ", "RQ")):
        ax = fig.add_subplot(grid[1, col])
        for suffix, group in _GROUPS:
            it, values = _series(records, f"panoptic_seg/{metric}{suffix}")
            if it.size:
                evaluated = True
                ax.plot(it, values, marker="o", markersize=3, label=group)
        ax.set_title(f"{metric} (%) at each evaluation")
        ax.set_xlabel("iteration")
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=ax.transAxes)
    for ax in fig.axes:  # one iteration axis for all panels (a single evaluation included)
        ax.set_xlim(0, max(last, 1) * 1.02)
    fig.suptitle(
        f"{title}  (up to iteration {last}{'' if evaluated else ', not evaluated'})".strip()
    )
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))


def write_training_curves(output_dir: str, path: Optional[str] = None) -> str:
    """Read ``output_dir/metrics.json`` and write the curves (default
    ``output_dir/training_curves.png``); returns the PNG's path."""
    records = load_metrics(os.path.join(output_dir, METRICS_JSON))
    if not records:
        raise ValueError(f"{os.path.join(output_dir, METRICS_JSON)} holds no records yet")
    path = path or os.path.join(output_dir, CURVES_PNG)
    plot_training_curves(records, path, title=os.path.basename(os.path.abspath(output_dir)))
    return path


class TrainingCurvesHook(HookBase):
    """At the end of training (after the writers flushed ``metrics.json``; register it last), draw
    ``OUTPUT_DIR/training_curves.png`` on the main process. A failure is logged, never raised."""

    def __init__(self, output_dir: str):
        self._output_dir = output_dir

    def after_train(self) -> None:
        if not comm.is_main_process():
            return
        try:
            path = write_training_curves(self._output_dir)
            logger.info(f"Training curves written to {path}")
        except (OSError, ValueError) as e:
            logger.warning(f"Training curves not drawn: {e}")
