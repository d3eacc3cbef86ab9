"""Benchmark tools (tools/benchmark_inference.py, benchmark_training.py, benchmark_evaluation.py) and their timing helpers.

Smoke tests run each tool's ``main`` at the tiniest settings and check that every figure line is printed
and that the checks the tools report hold; nothing here is timed.
"""
import logging
import os
import re

import pytest
import torch
from torch import nn

from conftest import ROOT
from tests.utils.scripts import load_script

profiling = load_script("benchmark_utils")
PeakMemory, StageTimer, format_table = profiling.PeakMemory, profiling.StageTimer, profiling.format_table
patch_method, summarize_iterations = profiling.patch_method, profiling.summarize_iterations

TINY_MODEL = [
    "--threads", "1", "--depth", "18", "--hidden-dim", "128", "--enc-layers", "1", "--dec-layers", "1",
    "--dim-feedforward", "64", "--num-queries", "10",
]
NUMBER = r"(\d+(?:\.\d+)?)"


def _load_tool(name: str):
    return load_script(name)


def _row(text: str, label: str, n: int):
    """Numbers of the first table row starting with ``label`` (exactly ``n`` numeric cells)."""
    m = re.search(r"^" + re.escape(label) + r"\s+" + r"\s+".join([NUMBER] * n) + r"\s*$", text, re.M)
    assert m, f"no row '{label}' with {n} numbers in:\n{text}"
    return [float(v) for v in m.groups()]


# ------------------------------------------------------------------------------------------ helpers
class _Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        return self.b(self.a(x))

    def double(self, x):
        return self(x) * 2


def test_stage_timer_attributes_time_and_restores_everything():
    clock = iter(range(1000))
    model = _Two()
    timer = StageTimer("cpu", clock=lambda: float(next(clock)))
    timer.hook_modules({"first": [model.a], "second": [model.b]})
    timer.wrap_method(model, "double", "outer")
    timer.start_iteration()
    model.double(torch.zeros(1, 4))  # "outer" is the outermost stage: a and b are counted in it
    model(torch.zeros(1, 4))  # hooks alone: a then b
    result = timer.end_iteration()
    assert set(result) == {"outer", "first", "second", "other", "total"}
    assert result["outer"] == 1 and result["first"] == 1 and result["second"] == 1
    assert result["total"] == sum(v for k, v in result.items() if k != "total")
    timer.remove()
    assert "double" not in vars(model) and not model.a._forward_hooks and not model.a._forward_pre_hooks
    assert summarize_iterations(timer.history)["first"] == 1
    with pytest.raises(ValueError, match="no timed iterations"):
        summarize_iterations([])


def test_patch_method_nests_and_restores_in_order():
    model = _Two()
    seen = []
    outer_no_grad = patch_method(model, "double", lambda: torch.no_grad())
    capture = patch_method(model, "double", on_return=seen.append)
    y = model.double(torch.zeros(1, 4, requires_grad=True))
    assert not y.requires_grad and seen == [y]
    with pytest.raises(RuntimeError, match="reverse order"):
        outer_no_grad.remove()
    capture.remove()
    assert "double" in vars(model)  # the first patch is still there
    outer_no_grad.remove()
    assert "double" not in vars(model)
    assert model.double(torch.zeros(1, 4, requires_grad=True)).requires_grad and len(seen) == 1


def test_peak_memory_counts_live_tensors_only():
    x = torch.ones(1024, 1024)  # 4 MiB, allocated before: not counted
    with PeakMemory("cpu") as pm:
        a = x * 2  # +4 MiB
        b = torch.cat([a, a])  # +8 MiB while a is alive -> peak 12 MiB
        del a
        c = b.sum()
    assert 12 * 2**20 <= pm.peak_bytes < 12 * 2**20 + 4096
    assert float(c) == 2 * 2 * 1024 * 1024


def test_format_table_aligns_columns():
    text = format_table(["stage", "ms"], [["backbone", "12.5"], ["total", "100.0"]])
    lines = text.splitlines()
    assert lines[0].startswith("stage") and set(lines[1]) <= {"-", " "}
    assert len({len(line) for line in lines}) == 1 and lines[2].endswith(" 12.5")


def test_cpu_contention_note(monkeypatch):
    monkeypatch.setattr(profiling.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(profiling.os, "getloadavg", lambda: (0.3, 0.0, 0.0), raising=False)
    assert profiling.cpu_contention_note(1) is None
    monkeypatch.setattr(profiling.os, "getloadavg", lambda: (3.5, 0.0, 0.0), raising=False)
    note = profiling.cpu_contention_note(2)
    assert "load average 3.50 on 2 cores" in note and "--threads 1" in note
    assert "--threads 1" not in profiling.cpu_contention_note(1)


# ------------------------------------------------------------------------------------------ inference
def test_inference_benchmark_prints_all_figures(capsys):
    tool = _load_tool("benchmark_inference")
    # output = input / 2: PIL NEAREST and nearest-exact pick the same pixels, so both post-processors agree
    rc = tool.main(TINY_MODEL + ["--input-size", "64x64", "--output-size", "32x32", "--batch-sizes", "1", "2",
                                 "--pp-kept", "4", "--pp-iters", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    diff = re.search(r"same weights check: max \|ours - official\| = (\S+) on class logits, (\S+) on mask logits", out)
    assert diff and float(diff.group(1)) < 1e-3 and float(diff.group(2)) < 1e-2
    for batch in (1, 2):
        section = out.split(f"== Inference, batch {batch}:")[1].split("== FLOPs")[0]
        stages = {s: _row(section, s, 3) for s in tool.STAGES + ("total",)}
        ours_ms, official_ms, _ = stages["total"]
        assert ours_ms > 0 and official_ms > 0
        assert sum(stages[s][0] for s in tool.STAGES) == pytest.approx(ours_ms, abs=0.1 * len(tool.STAGES))
        assert all(stages[s][0] > 0 for s in ("backbone", "transformer", "mask head"))
        ips = _row(section, "images/s", 3)
        assert ips[0] == pytest.approx(1000 / ours_ms, rel=0.02)
        flops = out.split(f"== FLOPs per image and peak memory of the network forward, batch {batch}:")[1]
        backbone = _row(flops, "backbone", 3)
        assert backbone[0] > 0 and backbone[0] == backbone[1]
        assert _row(flops, "mask head", 3)[2] == 1.0
        assert _row(flops, "peak MiB (network)", 3)[0] > 0
    assert out.count("network FLOPs ours <= official: yes") == 2
    pp = out.split("== Post-processing of one image")[1]
    for case in ("random-model masks, 4 kept", "synthetic blob masks, 4 kept"):
        m = re.search(re.escape(case) + r"\s+4\s+(\d+)/(\d+)\s+" + NUMBER + r"%\s+" + NUMBER + r"\s+" + NUMBER + r"\s+"
                      + NUMBER + "x", pp)
        assert m, pp
        assert m.group(1) == m.group(2)  # same number of segments
        # near-uniform random-model masks: the two softmax layouts may round near-ties differently
        assert float(m.group(3)) >= (99.0 if case.startswith("random") else 99.9)
    assert re.search(r"post-processing speed-up >= 5x in every case: (yes|NO)", out)
    assert re.search(r"^random model outputs\s+\d+\s+", pp, re.M)


def test_inference_benchmark_fvcore_counter(capsys):
    tool = _load_tool("benchmark_inference")
    rc = tool.main(TINY_MODEL + ["--input-size", "64x64", "--output-size", "64x64", "--batch-sizes", "1",
                                 "--pp-kept", "3", "--pp-iters", "1", "--flops", "fvcore"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "GFLOPs (fvcore: 1 per multiply-add)" in out and "network FLOPs ours <= official: yes" in out
    total = _row(out.split("== FLOPs")[1], "total", 3)
    assert total[0] > 0 and total[2] == 1.0
    assert "fvcore did not count" in out


def test_inference_benchmark_rejects_bad_arguments(capsys):
    tool = _load_tool("benchmark_inference")
    with pytest.raises(SystemExit):
        tool.parse_args(["--input-size", "800by1199"])
    assert "expected HxW" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.parse_args(["--warmup", "0"])
    assert "--warmup >= 1 or --flops off" in capsys.readouterr().err
    assert tool.parse_args(["--device", "cpu"]).batch_sizes == [1]


def test_synthetic_outputs_keep_exactly_the_requested_queries():
    tool = _load_tool("benchmark_inference")
    things, stuff = list(range(1, 91)), list(range(92, 201))
    out = tool.synthetic_outputs(30, 12, (20, 25), things, stuff, seed=3)
    assert out["pred_logits"].shape == (1, 30, 251) and out["pred_masks"].shape == (1, 30, 20, 25)
    scores, labels = out["pred_logits"][0].softmax(-1).max(-1)
    kept = (labels != 250) & (scores > 0.85)
    assert int(kept.sum()) == 12 and bool((labels[~kept] == 250).all())
    kept_stuff = [int(c) for c in labels[kept] if int(c) in stuff]
    assert len(kept_stuff) == 3 and len(set(kept_stuff)) == 2  # one stuff class predicted twice


# ------------------------------------------------------------------------------------------ training
def test_training_benchmark_prints_all_figures(capsys):
    tool = _load_tool("benchmark_training")
    rc = tool.main(TINY_MODEL + ["--image-size", "64x64", "--batch-size", "2", "--segments", "3",
                                 "--warmup", "0", "--iters", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    section = out.split("== Training, AMP off (float32)")[1]
    rows = {}
    for s in tool.STAGES + ("total",):
        m = re.search(r"^" + s + r"\s+" + NUMBER + r"\s+(\d+)%\s*$", section, re.M)
        assert m, section
        rows[s] = float(m.group(1))
    assert all(rows[s] > 0 for s in ("forward", "loss", "backward", "optimizer"))
    assert sum(rows[s] for s in tool.STAGES) == pytest.approx(rows["total"], abs=0.003 * len(tool.STAGES))
    m = re.search(r"iterations/s: " + NUMBER + r"\s+images/s: " + NUMBER + r"\s+\(last total loss " + NUMBER, out)
    assert m and float(m.group(1)) == pytest.approx(1 / rows["total"], rel=0.02)
    assert float(m.group(2)) == pytest.approx(2 * float(m.group(1)), rel=0.02)


def test_training_batch_targets_are_disjoint_panoptic_segments():
    tool = _load_tool("benchmark_training")
    args = tool.parse_args(["--image-size", "64x96", "--batch-size", "2", "--segments", "5"])
    is_thing = [True] * 80 + [False] * 53
    batch = tool.make_batch(args, is_thing, torch.device("cpu"))
    assert len(batch) == 2
    for x in batch:
        assert x["image"].shape == (3, 64, 96) and x["image"].dtype == torch.uint8
        inst = x["instances"]
        masks = inst.gt_masks.tensor
        assert masks.shape[1:] == (64, 96) and bool((masks.sum(0) == 1).all())  # every pixel in exactly one
        assert bool(masks.flatten(1).any(1).all())
        is_stuff = [c >= 80 for c in inst.gt_classes.tolist()]
        assert is_stuff == sorted(is_stuff, reverse=True) and 1 <= sum(is_stuff) <= 2  # stuff bands first
        boxes = inst.gt_boxes.tensor
        assert bool((boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all())


def test_evaluation_benchmark_prints_all_figures(capsys, tmp_path):
    """Tiny sets; the tool itself raises if any method's PQ/SQ/RQ differs from pq_compute's."""
    tool = _load_tool("benchmark_evaluation")
    keep = str(tmp_path / "data")
    tool.main(["--copies", "1", "--synthetic", "3", "--size", "24", "32", "--repeat", "1",
               "--model-ms", "1", "--keep", keep])
    out = capsys.readouterr().out
    assert "coco_sample: 2 images of 427x640" in out and "synthetic: 3 images of 24x32" in out
    for label in ("d2", "pq_compute", "pq_compute 1 core", "fast cold", "fast cold 1 thread", "fast warm",
                  "fast warm 1 thread"):
        assert len(re.findall(r"^" + re.escape(label) + r"\s+" + NUMBER + r"\s*$", out, re.M)) >= 2, label
    assert len(re.findall(r"inside inference_on_dataset, stand-in model", out)) == 2
    assert re.search(r"pq_compute / fast cold \(added\) = " + NUMBER + r"x|fast cold \(added\) is below the timing noise",
                     out)
    assert os.path.isfile(os.path.join(keep, "coco", "pred.json"))  # --keep keeps the generated data
    assert logging.root.manager.disable == logging.NOTSET  # the tool's log silencing is undone


def test_evaluation_benchmark_rejects_bad_arguments(capsys, tmp_path):
    tool = _load_tool("benchmark_evaluation")
    with pytest.raises(SystemExit):
        tool.main(["--copies", "0", "--synthetic", "0"])
    assert "not both 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["--model-ms", "-1"])
    assert "--model-ms must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["--keep", str(tmp_path)])
    assert "already exists" in capsys.readouterr().err
