"""Reporting of panoptic results: Detectron2's summary table, per-class table, JSON and bar chart.

Input is a panopticapi-style result (fractions): ``{"All"|"Things"|"Stuff": {"pq","sq","rq","n"},
"per_class": {dataset category id: {"pq","sq","rq"}}}`` (see ``summarize_pq_stats``) plus the raw
:class:`PQStats` (to tell categories that never appear, ``tp + fp + fn == 0``, from real zeros).
Everything reported is in percent, like Detectron2's ``COCOPanopticEvaluator``.
"""

import json
import logging
import math
import os
import tempfile
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional

from tabulate import tabulate

from .panoptic_quality import PQStats

__all__ = [
    "PER_CLASS_JSON",
    "PER_CLASS_PLOT",
    "d2_results",
    "per_class_rows",
    "format_summary_table",
    "format_per_class_table",
    "write_per_class_json",
    "plot_per_class_pq",
    "report_panoptic_results",
]

logger = logging.getLogger(__name__)

PER_CLASS_JSON = "panoptic_per_class.json"
PER_CLASS_PLOT = "panoptic_per_class_pq.png"
_GROUPS = ("All", "Things", "Stuff")


def _pct(value: float) -> Optional[float]:
    """Fraction -> percent; NaN (a group without categories) -> None (JSON null)."""
    value = float(value)
    return None if math.isnan(value) else 100.0 * value


def d2_results(
    pq_res: Mapping[str, Any], categories: Mapping[int, Mapping[str, Any]], stats: PQStats
) -> "OrderedDict[str, Dict[str, float]]":
    """Detectron2's result dict ``{"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", ..., "RQ_st"}}`` in
    percent, plus ``"PQ-<class name>"`` for every category that appears (GT or prediction).

    Keys with ``-`` are per-class, which Detectron2's ``print_csv_format`` leaves out of the
    copy-paste line (as it does for COCOEvaluator's ``AP-<class>``). A group without categories
    (e.g. no stuff in the dataset) is NaN.
    """
    res: Dict[str, float] = {}
    for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for key in ("pq", "sq", "rq"):
            res[key.upper() + suffix] = 100 * float(pq_res[group][key])
    for row in per_class_rows(pq_res, categories, stats):
        if row["present"]:
            res["PQ-" + row["name"]] = row["PQ"]
    return OrderedDict({"panoptic_seg": res})


def per_class_rows(
    pq_res: Mapping[str, Any], categories: Mapping[int, Mapping[str, Any]], stats: PQStats
) -> List[Dict[str, Any]]:
    """One dict per category (JSON order): id, name, isthing, present, PQ/SQ/RQ (%),
    tp/fp/fn/iou."""
    rows = []
    for category_id, cat in categories.items():
        iou, tp, fp, fn = stats.get(category_id)
        res = pq_res["per_class"].get(category_id, {"pq": 0.0, "sq": 0.0, "rq": 0.0})
        rows.append(
            {
                "category_id": category_id,
                "name": str(cat.get("name", category_id)),
                "isthing": cat["isthing"] == 1,
                "present": tp + fp + fn > 0,
                "PQ": 100 * float(res["pq"]),
                "SQ": 100 * float(res["sq"]),
                "RQ": 100 * float(res["rq"]),
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "iou_sum": iou,
            }
        )
    return rows


def format_summary_table(pq_res: Mapping[str, Any]) -> str:
    """The table Detectron2 prints: PQ / SQ / RQ / #categories for All, Things, Stuff."""
    data = [
        [name] + [100 * float(pq_res[name][k]) for k in ("pq", "sq", "rq")] + [pq_res[name]["n"]]
        for name in _GROUPS
    ]
    return tabulate(
        data,
        headers=["", "PQ", "SQ", "RQ", "#categories"],
        tablefmt="pipe",
        floatfmt=".3f",
        stralign="center",
        numalign="center",
    )


def format_per_class_table(rows: List[Dict[str, Any]]) -> str:
    """Per-class PQ / SQ / RQ (%) and TP / FP / FN of the categories that appear."""
    # Pre-formatted strings: tabulate's number detection is slow on hundreds of rows.
    data = [
        [
            str(r["category_id"]),
            r["name"],
            "thing" if r["isthing"] else "stuff",
            f"{r['PQ']:.3f}",
            f"{r['SQ']:.3f}",
            f"{r['RQ']:.3f}",
            str(r["tp"]),
            str(r["fp"]),
            str(r["fn"]),
        ]
        for r in rows
        if r["present"]
    ]
    table = tabulate(
        data,
        headers=["id", "category", "type", "PQ", "SQ", "RQ", "TP", "FP", "FN"],
        tablefmt="pipe",
        disable_numparse=True,
        colalign=("right", "left", "left") + ("right",) * 6,
    )
    absent = [r["name"] for r in rows if not r["present"]]
    if absent:
        names = ", ".join(absent[:20]) + (", ..." if len(absent) > 20 else "")
        table += (
            f"\n{len(absent)} categories appear neither in the ground truth nor in the "
            f"predictions (not averaged): {names}"
        )
    return table


def _atomic_target(path: str, suffix: str):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix="." + os.path.basename(path) + ".", suffix=suffix
    )
    os.close(fd)
    return tmp


def write_per_class_json(path: str, pq_res: Mapping[str, Any], rows: List[Dict[str, Any]]) -> None:
    """Write ``{"units": "percent", "summary": {group: {PQ, SQ, RQ, n}}, "per_class": rows}``
    atomically. Groups without categories have null PQ/SQ/RQ."""
    payload = {
        "units": "percent",
        "summary": {
            name: {
                "PQ": _pct(pq_res[name]["pq"]),
                "SQ": _pct(pq_res[name]["sq"]),
                "RQ": _pct(pq_res[name]["rq"]),
                "n": int(pq_res[name]["n"]),
            }
            for name in _GROUPS
        },
        "per_class": rows,
    }
    tmp = _atomic_target(path, ".json")
    try:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=1, allow_nan=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def plot_per_class_pq(path: str, pq_res: Mapping[str, Any], rows: List[Dict[str, Any]]) -> None:
    """Bar chart of per-class PQ (categories that appear, sorted by PQ; things blue, stuff orange),
    with the mean PQ of All as a dashed line; written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    shown = sorted((r for r in rows if r["present"]), key=lambda r: -r["PQ"])
    width = min(60.0, max(6.0, 0.22 * len(shown) + 2))
    fig = Figure(figsize=(width, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = ["tab:blue" if r["isthing"] else "tab:orange" for r in shown]
    ax.bar(range(len(shown)), [r["PQ"] for r in shown], color=colors)
    ax.set_xticks(range(len(shown)))
    ax.set_xticklabels([r["name"] for r in shown], rotation=90, fontsize=7)
    ax.set_xlim(-0.6, max(len(shown), 1) - 0.4)
    ax.set_ylim(0, 100)
    ax.set_ylabel("PQ (%)")
    mean_pq = _pct(pq_res["All"]["pq"])
    title = f"Per-class PQ ({len(shown)} categories)"
    if mean_pq is not None:
        ax.axhline(mean_pq, color="gray", linestyle="--", linewidth=1)
        title += f", mean PQ {mean_pq:.1f}"
    ax.set_title(title)
    ax.legend(
        handles=[Patch(color="tab:blue", label="thing"), Patch(color="tab:orange", label="stuff")],
        loc="upper right",
        fontsize=8,
    )
    fig.tight_layout()
    tmp = _atomic_target(path, ".png")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def report_panoptic_results(
    pq_res: Mapping[str, Any],
    stats: PQStats,
    categories: Mapping[int, Mapping[str, Any]],
    output_dir: Optional[str] = None,
) -> "OrderedDict[str, Dict[str, float]]":
    """Log the summary and per-class tables, write ``panoptic_per_class.json`` and
    ``panoptic_per_class_pq.png`` to ``output_dir`` (if given); return :func:`d2_results`."""
    rows = per_class_rows(pq_res, categories, stats)
    if logger.isEnabledFor(logging.INFO):
        logger.info("Panoptic Evaluation Results:\n" + format_summary_table(pq_res))
        logger.info("Per-class panoptic results (%):\n" + format_per_class_table(rows))
    if output_dir:
        json_path = os.path.join(output_dir, PER_CLASS_JSON)
        write_per_class_json(json_path, pq_res, rows)
        plot_per_class_pq(os.path.join(output_dir, PER_CLASS_PLOT), pq_res, rows)
        logger.info(f"Per-class panoptic results written to {json_path} and {PER_CLASS_PLOT}")
    return d2_results(pq_res, categories, stats)
