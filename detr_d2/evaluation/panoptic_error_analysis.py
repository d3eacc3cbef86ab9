"""Streaming panoptic error analysis over a dataset: per-cause counts (overall and per class),
oracle PQ gains, the worst images, and the JSON / printed table that report them.

:class:`PanopticErrorAnalysis` is fed one image at a time with the evaluator's matching
(:class:`.panoptic_matching.ImageMatch`) and its causes (:func:`.panoptic_errors.classify_errors`).
It keeps only sums per (class, cause) and the ``worst_images`` images with the most PQ lost, so its
memory does not grow with the number of images. The causes and the oracle are defined in
:mod:`.panoptic_errors`; pictures are drawn by :mod:`.panoptic_error_plots`.
"""

import heapq
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
from tabulate import tabulate

from .panoptic_errors import (
    CAUSES,
    FN_CAUSES,
    FP_CAUSES,
    ImageErrors,
    image_pq_lost,
    summarize_oracles,
)
from .panoptic_matching import ImageMatch
from .panoptic_quality import PQStats, RunLengthIdMap

__all__ = ["PanopticErrorAnalysis", "WorstImage", "format_error_table"]

logger = logging.getLogger(__name__)


@dataclass
class WorstImage:
    """What is needed to draw one of the worst images (prediction in run-length form)."""

    image_id: Any
    file_name: Optional[str]
    pq_lost: float
    prediction: RunLengthIdMap
    pred_segments: List[Dict[str, Any]]
    matches: List[Tuple[int, int]]  # (GT id, pred id) true positives
    fp: Dict[int, Tuple[str, Optional[int]]]
    fn: Dict[int, Tuple[str, Optional[int]]]
    ignored: List[int]

    def summary(self) -> Dict[str, Any]:
        def count(causes):
            return dict(sorted(_count(c for c, _ in causes.values()).items()))

        return {
            "image_id": self.image_id,
            "file_name": self.file_name,
            "pq_lost": self.pq_lost,
            "fp": count(self.fp),
            "fn": count(self.fn),
        }


def _count(items) -> Dict[str, int]:
    out: Dict[str, int] = defaultdict(int)
    for item in items:
        out[item] += 1
    return out


class PanopticErrorAnalysis:
    """Sums of one evaluation's error causes (see the module docstring).

    Args:
        categories: ``{dataset category id: category dict with "name", "isthing"}``.
        worst_images: how many images with the most PQ lost to keep for drawing.
    """

    def __init__(self, categories: Mapping[int, Mapping[str, Any]], worst_images: int = 8):
        if worst_images < 0:
            raise ValueError(f"worst_images must be >= 0, got {worst_images}")
        self.categories = categories
        self.worst_images = int(worst_images)
        self.counts: Dict[Tuple[str, int, str], int] = defaultdict(int)  # (fp|fn, class, cause)
        self.deltas: Dict[str, PQStats] = {cause: PQStats() for cause in CAUSES}
        self.ignored = 0
        self.crowd = 0
        self.images = 0
        self._worst: List[Tuple[float, int, int, WorstImage]] = []  # min-heap
        self._seq = 0  # tie-break: earlier images first (an int, so the object pickles)

    def add(
        self,
        image_id: Any,
        file_name: Optional[str],
        match: ImageMatch,
        errors: ImageErrors,
        pred_id_map: np.ndarray,
    ) -> None:
        """Add one image (``pred_id_map``: its (H, W) predicted ids, encoded only if kept)."""
        self.images += 1
        self.ignored += errors.ignored
        self.crowd += errors.crowd
        for kind, causes, segments in (
            ("fp", errors.fp, match.pred_segments),
            ("fn", errors.fn, match.gt_segments),
        ):
            for seg_id, (cause, _) in causes.items():
                self.counts[(kind, int(segments[seg_id]["category_id"]), cause)] += 1
        for cause, delta in errors.deltas.items():
            self.deltas[cause] += delta
        if not self.worst_images or not (errors.fp or errors.fn):
            return
        lost = image_pq_lost(match.stats, errors)
        self._seq += 1
        key = (lost, len(errors.fp) + len(errors.fn), -self._seq)
        if len(self._worst) >= self.worst_images and key <= self._worst[0][:3]:
            return
        worst = WorstImage(
            image_id,
            file_name,
            lost,
            RunLengthIdMap.from_id_map(np.asarray(pred_id_map)),
            [dict(s) for s in match.pred_segments.values()],
            [(g, p) for g, p, _ in match.matches],
            dict(errors.fp),
            dict(errors.fn),
            list(match.ignored),
        )
        entry = key + (worst,)
        if len(self._worst) < self.worst_images:
            heapq.heappush(self._worst, entry)
        else:
            heapq.heapreplace(self._worst, entry)

    def merge(self, other: "PanopticErrorAnalysis") -> None:
        """Add another worker's sums (e.g. gathered from other processes)."""
        self.images += other.images
        self.ignored += other.ignored
        self.crowd += other.crowd
        for key, n in other.counts.items():
            self.counts[key] += n
        for cause, delta in other.deltas.items():
            self.deltas[cause] += delta
        for entry in other._worst:
            self._seq += 1
            entry = entry[:2] + (-self._seq,) + entry[3:]
            if len(self._worst) < self.worst_images:
                heapq.heappush(self._worst, entry)
            elif entry[:3] > self._worst[0][:3]:
                heapq.heapreplace(self._worst, entry)

    def worst(self) -> List[WorstImage]:
        """The kept images, most PQ lost first."""
        return [e[3] for e in sorted(self._worst, key=lambda e: e[:3], reverse=True)]

    def result(self, total: PQStats) -> Dict[str, Any]:
        """The report (percent) given the dataset's summed statistics ``total``: see
        ``docs/error_analysis.md`` for the fields."""
        summaries: Dict[str, Dict[str, Any]] = {}  # each summarize_pq_stats computed once
        oracles = summarize_oracles(total, self.deltas, self.categories, summaries)
        base = summaries["base"]
        fixed_per_class = {cause: summaries[cause]["per_class"] for cause in CAUSES}
        causes = {}
        for cause in CAUSES:
            fp = sum(n for (k, _, c), n in self.counts.items() if k == "fp" and c == cause)
            fn = sum(n for (k, _, c), n in self.counts.items() if k == "fn" and c == cause)
            causes[cause] = {"fp": fp, "fn": fn, **oracles[cause]}
        per_class = []
        for category_id, cat in self.categories.items():
            iou, tp, fp, fn = total.get(category_id)
            if tp + fp + fn == 0:
                continue
            pq = base["per_class"][category_id]["pq"]
            per_class.append(
                {
                    "category_id": category_id,
                    "name": str(cat.get("name", category_id)),
                    "isthing": cat["isthing"] == 1,
                    "PQ": 100.0 * pq,
                    "tp": tp,
                    "fp": fp,
                    "fn": fn,
                    "fp_causes": self._class_counts("fp", category_id, FP_CAUSES),
                    "fn_causes": self._class_counts("fn", category_id, FN_CAUSES),
                    "PQ_gain": {
                        cause: 100.0 * (fixed_per_class[cause][category_id]["pq"] - pq)
                        for cause in CAUSES
                    },
                }
            )
        totals = np.sum([total.get(c)[1:] for c in self.categories], axis=0).tolist()
        return {
            "units": "percent",
            "images": self.images,
            "PQ": _pct(base["All"]["pq"]),
            "PQ_th": _pct(base["Things"]["pq"]),
            "PQ_st": _pct(base["Stuff"]["pq"]),
            "tp": int(totals[0]),
            "fp": int(totals[1]),
            "fn": int(totals[2]),
            "ignored_crowd_void": self.ignored,
            "crowd_segments": self.crowd,
            "causes": causes,
            "all_errors_fixed": oracles["all"],
            "per_class": per_class,
            "worst_images": [w.summary() for w in self.worst()],
        }

    def _class_counts(self, kind: str, category_id: int, causes) -> Dict[str, int]:
        return {c: self.counts.get((kind, category_id, c), 0) for c in causes}


def _pct(value: float) -> Optional[float]:
    return None if value != value else 100.0 * float(value)


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:+.2f}"


def format_error_table(result: Mapping[str, Any], top_classes: int = 10) -> str:
    """The printed summary: FP / FN and PQ gain per cause, then the classes with most errors."""
    rows = [
        [cause, str(v["fp"]), str(v["fn"]), _fmt(v["PQ_gain"])]
        + [_fmt(v["PQ_th_gain"]), _fmt(v["PQ_st_gain"])]
        for cause, v in result["causes"].items()
    ]
    fixed = result["all_errors_fixed"]
    rows.append(
        ["all errors", str(result["fp"]), str(result["fn"]), _fmt(fixed["PQ_gain"])]
        + [_fmt(fixed["PQ_th_gain"]), _fmt(fixed["PQ_st_gain"])]
    )
    pq = result["PQ"]
    head = (
        f"Panoptic errors of {result['images']} images: PQ {pq if pq is None else round(pq, 2)}, "
        f"TP {result['tp']}, FP {result['fp']}, FN {result['fn']}; "
        f"{result['ignored_crowd_void']} predictions ignored in crowd/VOID "
        f"({result['crowd_segments']} crowd segments). PQ gain = PQ with that cause fixed - PQ:"
    )
    table = tabulate(
        rows,
        headers=["cause", "FP", "FN", "PQ gain", "Things", "Stuff"],
        tablefmt="pipe",
        disable_numparse=True,
        colalign=("left",) + ("right",) * 5,
    )
    worst_classes = sorted(result["per_class"], key=lambda r: -(r["fp"] + r["fn"]))[:top_classes]
    class_rows = []
    for r in worst_classes:
        causes = {f"FP {c}": n for c, n in r["fp_causes"].items() if n}
        causes.update({f"FN {c}": n for c, n in r["fn_causes"].items() if n})
        main = ", ".join(f"{k} {n}" for k, n in sorted(causes.items(), key=lambda kv: -kv[1])[:3])
        class_rows.append([r["name"], f"{r['PQ']:.1f}", str(r["fp"]), str(r["fn"]), main])
    classes = tabulate(
        class_rows,
        headers=["class", "PQ", "FP", "FN", "main causes"],
        tablefmt="pipe",
        disable_numparse=True,
    )
    return f"{head}\n{table}\nClasses with the most errors:\n{classes}"
