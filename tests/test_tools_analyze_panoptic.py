"""tools/analyze_panoptic.py: on predictions the evaluator wrote, the same report as the evaluator's
own error analysis; bad input ends with one error line."""

import json
import os

import numpy as np

from detr_d2.evaluation import FastCOCOPanopticEvaluator
from detr_d2.evaluation.panoptic_error_report import ERRORS_JSON, ERRORS_PLOT, WORST_DIR
from tests.utils.evaluation import (
    COCO_SAMPLE,
    COCO_SAMPLE_JSON,
    COCO_SAMPLE_PNGS,
    perturbed_outputs,
    register_coco_sample,
    run_evaluator,
)
from tests.utils.scripts import load_script

tool = load_script("analyze_panoptic")
OPS = ("drop", "merge", "shift", "relabel", "void", "crowd_overlap", "extra")


def _evaluated(tmp_path):
    name = register_coco_sample()
    rng = np.random.default_rng(5)
    inputs, outputs = perturbed_outputs(name, COCO_SAMPLE_JSON, COCO_SAMPLE_PNGS, rng, OPS)
    for x in inputs:
        x["file_name"] = os.path.join(COCO_SAMPLE, "input_images", x["file_name"])
    ev_dir = tmp_path / "eval"
    evaluator = FastCOCOPanopticEvaluator(
        name, str(ev_dir), write_predictions=True, error_analysis=True, worst_images=1
    )
    run_evaluator(evaluator, inputs, outputs)
    return ev_dir


def _args(ev_dir, out):
    return [
        "--gt-json",
        COCO_SAMPLE_JSON,
        "--gt-root",
        COCO_SAMPLE_PNGS,
        "--predictions",
        str(ev_dir / "predictions.json"),
        "--images",
        os.path.join(COCO_SAMPLE, "input_images"),
        "--output",
        str(out),
        "--worst",
        "1",
    ]


def test_tool_report_equals_the_evaluators(tmp_path, capsys):
    ev_dir = _evaluated(tmp_path)
    out = tmp_path / "tool"
    assert tool.main(_args(ev_dir, out)) == 0
    printed = capsys.readouterr().out
    assert "| cause" in printed and "poor_mask" in printed and "PQ gain" in printed
    ours = json.loads((out / ERRORS_JSON).read_text())
    evaluators = json.loads((ev_dir / ERRORS_JSON).read_text())
    worst = lambda r: [(w["image_id"], w["fp"], w["fn"]) for w in r["worst_images"]]  # noqa: E731
    assert worst(ours) == worst(evaluators)
    for r in (ours, evaluators):
        for w in r["worst_images"]:
            w.pop("file_name")  # the tool names the image file, the evaluator its input's
    assert ours == evaluators
    assert ours["fp"] + ours["fn"] > 0
    assert (out / ERRORS_PLOT).is_file() and len(os.listdir(out / WORST_DIR)) == 1


def test_tool_errors_are_one_line(tmp_path, capsys):
    ev_dir = _evaluated(tmp_path)
    out = tmp_path / "tool"
    args = _args(ev_dir, out)
    bad = list(args)
    bad[bad.index("--predictions") + 1] = str(tmp_path / "missing.json")
    assert tool.main(bad) == 1
    assert capsys.readouterr().err.strip().startswith("error: predictions JSON not found")
    out.mkdir()
    (out / "old.txt").write_text("x")
    assert tool.main(args) == 1
    assert "not empty" in capsys.readouterr().err
    assert tool.main(args + ["--overwrite"]) == 0
    assert tool.main(_args(ev_dir, ev_dir / "predictions")) == 1  # an input folder
    assert "error:" in capsys.readouterr().err
