"""The evaluator's error analysis on real (perturbed COCO sample) predictions: its counts agree with
the evaluator's TP/FP/FN, PQ is unchanged, the pictures are written, and memory does not grow with
the number of images."""

import copy
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from detr_d2.evaluation import FastCOCOPanopticEvaluator, build_panoptic_evaluator
from detr_d2.evaluation.panoptic_error_analysis import PanopticErrorAnalysis
from detr_d2.evaluation.panoptic_error_report import ERRORS_JSON, ERRORS_PLOT, WORST_DIR
from detr_d2.evaluation.panoptic_errors import FN_CAUSES, FP_CAUSES, classify_errors
from detr_d2.evaluation.panoptic_ground_truth import PanopticGroundTruth
from detr_d2.evaluation.panoptic_matching import match_image
from detr_d2.evaluation.panoptic_quality import PQStats, pair_intersections
from tests.utils.evaluation import (
    COCO_SAMPLE_JSON,
    COCO_SAMPLE_PNGS,
    perturbed_outputs,
    register_coco_sample,
    run_evaluator,
)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_error_counts_agree_with_the_evaluator(tmp_path, num_workers):
    name = register_coco_sample()
    rng = np.random.default_rng(3)
    for round_ in range(2):
        inputs, outputs = perturbed_outputs(name, COCO_SAMPLE_JSON, COCO_SAMPLE_PNGS, rng)
        plain = run_evaluator(FastCOCOPanopticEvaluator(name, None, num_workers=0), inputs, outputs)
        out = tmp_path / f"{num_workers}_{round_}"
        evaluator = FastCOCOPanopticEvaluator(
            name, str(out), num_workers=num_workers, error_analysis=True, worst_images=1
        )
        res = run_evaluator(evaluator, inputs, outputs)
        assert res == plain  # the analysis changes no PQ number
        report = json.loads((out / ERRORS_JSON).read_text())
        per_class = json.loads((out / "panoptic_per_class.json").read_text())["per_class"]
        fp = sum(r["fp"] for r in per_class)
        fn = sum(r["fn"] for r in per_class)
        tp = sum(r["tp"] for r in per_class)
        assert fp + fn > 0  # the perturbations made errors
        assert (report["tp"], report["fp"], report["fn"]) == (tp, fp, fn)
        assert sum(v["fp"] for v in report["causes"].values()) == fp
        assert sum(v["fn"] for v in report["causes"].values()) == fn
        assert report["PQ"] == pytest.approx(res["panoptic_seg"]["PQ"])
        by_id = {r["category_id"]: r for r in per_class}
        for row in report["per_class"]:
            assert sum(row["fp_causes"].values()) == by_id[row["category_id"]]["fp"]
            assert sum(row["fn_causes"].values()) == by_id[row["category_id"]]["fn"]
            assert set(row["fp_causes"]) == set(FP_CAUSES)
            assert set(row["fn_causes"]) == set(FN_CAUSES)
        # Fixing every error gives PQ 100 where every fixed FN gets IoU 1 and TPs are perfect:
        # at least it never lowers PQ.
        assert report["all_errors_fixed"]["PQ"] >= report["PQ"] - 1e-9
        worst = sorted((out / WORST_DIR).iterdir())
        assert len(worst) == 1 and len(report["worst_images"]) == len(worst)
        with Image.open(worst[0]) as im:
            assert im.format == "PNG" and im.width > 3 * im.height  # four panels in a row
        assert (out / ERRORS_PLOT).stat().st_size > 0


def test_analysis_option_only_for_the_in_process_evaluator(tmp_path):
    name = register_coco_sample()
    with pytest.raises(ValueError, match="error_analysis is an option"):
        build_panoptic_evaluator("panopticapi", name, str(tmp_path), error_analysis=True)


def _sample_images():
    name = register_coco_sample()
    gt = PanopticGroundTruth(COCO_SAMPLE_JSON, COCO_SAMPLE_PNGS)
    rng = np.random.default_rng(11)
    inputs, outputs = perturbed_outputs(name, COCO_SAMPLE_JSON, COCO_SAMPLE_PNGS, rng)
    items = []
    for x, y in zip(inputs, outputs):
        ann = gt.by_image_id[x["image_id"]]
        ids = y["panoptic_seg"][0].numpy()
        segments = [
            {"id": s["id"], "category_id": _dataset_id(name, s)} for s in y["panoptic_seg"][1]
        ]
        counts = pair_intersections(gt.id_map(ann, None), ids)
        match = match_image(*counts, ann["segments_info"], segments, gt.categories)
        items.append((x, match, classify_errors(match, gt.categories), ids))
    return gt, items


def _dataset_id(name, segment):
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(name)
    mapping = (
        meta.thing_dataset_id_to_contiguous_id
        if segment["isthing"]
        else meta.stuff_dataset_id_to_contiguous_id
    )
    return {v: k for k, v in mapping.items()}[segment["category_id"]]


def test_memory_does_not_grow_with_the_number_of_images():
    gt, items = _sample_images()
    analysis = PanopticErrorAnalysis(gt.categories, worst_images=1)
    sizes = []
    for repeat in range(60):
        for x, match, errors, ids in items:
            analysis.add(x["image_id"], x["file_name"], match, errors, ids)
        if repeat in (9, 59):
            sizes.append(len(pickle.dumps(analysis)))
    assert analysis.images == 60 * len(items)
    assert sizes[1] <= sizes[0] + 64  # counters grow by digits at most, not by images


def test_merged_workers_equal_one_worker():
    gt, items = _sample_images()
    one = PanopticErrorAnalysis(gt.categories, worst_images=2)
    parts = [PanopticErrorAnalysis(gt.categories, worst_images=2) for _ in range(2)]
    for i, (x, match, errors, ids) in enumerate(items * 3):
        one.add(x["image_id"], x["file_name"], match, errors, ids)
        parts[i % 2].add(x["image_id"], x["file_name"], match, errors, ids)
    merged = copy.deepcopy(parts[0])
    merged.merge(parts[1])
    total = PQStats()
    for _, match, _, _ in items * 3:
        total += match.stats
    a, b = one.result(total), merged.result(total)
    assert a["causes"] == b["causes"] and a["per_class"] == b["per_class"]
    assert [w["pq_lost"] for w in a["worst_images"]] == [w["pq_lost"] for w in b["worst_images"]]


def test_pq_lost_chart_draws_a_bar_per_cause_with_a_gain(tmp_path):
    from detr_d2.evaluation.panoptic_error_plots import CAUSE_COLORS, plot_pq_lost_per_cause

    gains = {"missed": 12.5, "poor_mask": 4.0, "wrong_class": 0.0}
    causes = {
        c: {"PQ_gain": g, "PQ_th_gain": g / 2, "PQ_st_gain": None, "fp": 1, "fn": 2}
        for c, g in gains.items()
    }
    result = {"causes": causes, "images": 3, "PQ": 40.0, "all_errors_fixed": {"PQ": 60.0}}
    path = tmp_path / "chart.png"
    plot_pq_lost_per_cause(str(path), result)
    with Image.open(path) as im:
        assert (im.format, im.size) == ("PNG", (800, 400))
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    colours = {tuple(p) for p in np.unique(pixels, axis=0)}

    def count(rgb):
        return int((pixels == np.array([round(255 * c) for c in rgb])).all(axis=1).sum())

    # The "All" bars are solid in the cause's colour, their areas in the ratio of the gains.
    missed, poor = count(CAUSE_COLORS["missed"]), count(CAUSE_COLORS["poor_mask"])
    assert missed > 0 and poor > 0
    assert missed / poor == pytest.approx(12.5 / 4.0, rel=0.1)
    # No bar for a cause that gains nothing.
    assert tuple(round(255 * c) for c in CAUSE_COLORS["wrong_class"]) not in colours
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no temporary file left
