"""Benchmarks (benchmarks/inference.py, training.py, evaluation.py, fusion.py, data_loading.py) and
their timing helpers.

Smoke tests run each tool's ``main`` at the tiniest settings and check that every figure line is
printed and that the checks the tools report hold; nothing here is timed.
"""

import importlib
import logging
import os
import re

import pytest
import torch
from torch import nn

profiling = importlib.import_module("benchmarks.utils")
PeakMemory, StageTimer, format_table = (
    profiling.PeakMemory,
    profiling.StageTimer,
    profiling.format_table,
)
patch_method, summarize_iterations = profiling.patch_method, profiling.summarize_iterations

TINY_MODEL = [
    "--threads",
    "1",
    "--depth",
    "18",
    "--hidden-dim",
    "128",
    "--enc-layers",
    "1",
    "--dec-layers",
    "1",
    "--dim-feedforward",
    "64",
    "--num-queries",
    "10",
]
NUMBER = r"(\d+(?:\.\d+)?)"


def _load_tool(name: str):
    return importlib.import_module(f"benchmarks.{name}")


def _row(text: str, label: str, n: int):
    """Numbers of the first table row starting with ``label`` (exactly ``n`` numeric cells)."""
    m = re.search(
        r"^" + re.escape(label) + r"\s+" + r"\s+".join([NUMBER] * n) + r"\s*$", text, re.M
    )
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
    assert (
        "double" not in vars(model)
        and not model.a._forward_hooks
        and not model.a._forward_pre_hooks
    )
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


def test_stage_timer_inner_nesting_pauses_the_enclosing_stage():
    clock = iter(range(1000))
    model = _Two()
    timer = StageTimer("cpu", clock=lambda: float(next(clock)), nesting="inner")
    timer.hook_modules({"first": [model.a], "second": [model.b]})
    timer.wrap_method(model, "double", "outer")
    timer.start_iteration()  # 0
    model.double(torch.zeros(1, 4))  # outer 1..2, first 2..3, outer 3..4, second 4..5, outer 5..6
    result = timer.end_iteration()  # 7
    timer.remove()
    assert result["outer"] == 3 and result["first"] == 1 and result["second"] == 1
    assert result["total"] == 7 and result["other"] == 2
    with pytest.raises(ValueError, match="nesting"):
        StageTimer("cpu", nesting="middle")


# ------------------------------------------------------------------------------------------ oracle
def _criterion_case(num_slots=7, queries=6, size=(30, 37)):
    """Random raw outputs (two images, aux outputs) and targets of different sizes (padded like
    DETR)."""
    from detectron2.structures import BitMasks

    g = torch.Generator().manual_seed(5)
    b, hm, wm = 2, (size[0] + 3) // 4, (size[1] + 3) // 4

    def heads():
        boxes = torch.cat(
            [
                0.2 + 0.6 * torch.rand(b, queries, 2, generator=g),
                0.1 + 0.3 * torch.rand(b, queries, 2, generator=g),
            ],
            -1,
        )
        return {
            "pred_logits": torch.randn(b, queries, num_slots + 1, generator=g),
            "pred_boxes": boxes,
        }

    outputs = heads()
    outputs["pred_masks"] = 3 * torch.randn(b, queries, hm, wm, generator=g)
    outputs["aux_outputs"] = [heads()]
    targets = []
    for i, n in enumerate((3, 4)):
        h, w = size[0] - 5 * i, size[1] - 3 * i
        masks = torch.rand(n, h, w, generator=g) > 0.7
        masks[:, 1 + i, 2] = True  # no empty mask
        boxes = BitMasks(masks).get_bounding_boxes().tensor / torch.tensor([w, h, w, h])
        cxcywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], -1)
        targets.append(
            {"labels": torch.randint(num_slots, (n,), generator=g), "boxes": cxcywh, "masks": masks}
        )
    return outputs, targets


def test_official_criterion_oracle_matches_detr_d2_criterion():
    """The oracle (official SetCriterion, all queries' masks) and detr_d2's criterion (both ways:
    all masks, or the matched queries' masks from a mask function) give the same losses, auxiliary
    ones included."""
    from detr_d2.modeling.criterion import SetCriterion
    from detr_d2.modeling.matcher import HungarianMatcher
    from tests.utils.official_detr.criterion import build_official_criterion

    outputs, targets = _criterion_case()
    official = build_official_criterion(num_classes=7, aux_loss=True, dec_layers=2)
    ref = official(outputs, targets)
    assert set(ref) >= {
        "loss_ce",
        "loss_bbox",
        "loss_giou",
        "loss_mask",
        "loss_dice",
        "cardinality_error",
        "loss_ce_0",
        "loss_bbox_0",
        "loss_giou_0",
    }
    assert (
        "loss_mask_0" not in ref
        and official.weight_dict["loss_giou_0"] == 2
        and official.weight_dict["loss_bbox"] == 5
    )

    ours = SetCriterion(
        7, HungarianMatcher(1, 5, 2), {}, eos_coef=0.1, losses=["labels", "boxes", "masks"]
    )
    with_masks = ours(outputs, targets)
    calls = []

    def mask_fn(queries):
        calls.append([q.tolist() for q in queries])
        return [outputs["pred_masks"][i, q] for i, q in enumerate(queries)]

    matched_only = ours({k: v for k, v in outputs.items() if k != "pred_masks"}, targets, mask_fn)
    for key in (
        "loss_ce",
        "loss_bbox",
        "loss_giou",
        "loss_mask",
        "loss_dice",
        "loss_ce_0",
        "loss_bbox_0",
        "loss_giou_0",
    ):
        assert with_masks[key].item() == pytest.approx(ref[key].item(), rel=1e-5), key
        assert matched_only[key].item() == pytest.approx(ref[key].item(), rel=1e-5), key
    assert [len(q) for q in calls[0]] == [3, 4]  # the mask function ran on the matched queries only


# ------------------------------------------------------------------------------------------
# inference
INFERENCE_TINY = TINY_MODEL + [
    "--input-size",
    "64x64",
    "--output-size",
    "32x32",
    "--pp-kept",
    "4",
    "--pp-iters",
    "1",
]


def _check_inference_output(
    tool, out: str, batches, scenes=("typical", "crowded"), num_queries=10, strict=True
):
    """``strict``: float32 (the two sides' logits agree closely and their panoptic maps match);
    float16 autocast only keeps the same queries."""
    fractions = {"typical": 0.15, "crowded": 0.45}
    for scene in scenes:
        kept = round(fractions[scene] * num_queries)
        assert (
            f"{scene} scene: class head set to keep {kept} of {num_queries} queries per image"
            in out
        )
        for batch in batches:
            section = next(
                p
                for p in re.split(r"^\[\s*\d+ s\] ", out, flags=re.M)
                if p.startswith(f"{scene} scene, batch {batch}:")
            )
            m = re.search(
                r"kept queries per image: ours \[([\d, ]+)\], official \[([\d, ]+)\] "
                r"\(equal: yes\)",
                section,
            )
            assert (
                m
                and m.group(1) == m.group(2)
                and [int(v) for v in m.group(1).split(",")] == [kept] * batch
            )
            diff = re.search(
                r"same weights check: max \|ours - official\| = (\S+) on class logits, (\S+) "
                r"on the kept",
                section,
            )
            segments = re.search(
                r"pixel agreement >= "
                + NUMBER
                + r"%; same segments \(count, categories, >= 99% of "
                r"pixels\): (yes|NO)",
                section,
            )
            assert diff and segments
            if strict:
                assert (
                    float(diff.group(1)) < 1e-2
                    and float(diff.group(2)) < 1e-2
                    and segments.group(2) == "yes"
                )
            table = section.split(f"== Inference, {scene} scene, batch {batch}:")[1].split(
                "== FLOPs"
            )[0]
            stages = {s: _row(table, s, 3) for s in tool.STAGES + ("total",)}
            ours_ms, official_ms, speedup = stages["total"]
            assert (
                ours_ms > 0
                and official_ms > 0
                and speedup == pytest.approx(official_ms / ours_ms, rel=0.05)
            )
            assert sum(stages[s][0] for s in tool.STAGES) == pytest.approx(
                ours_ms, abs=0.1 * len(tool.STAGES)
            )
            assert all(
                stages[s][0] > 0 and stages[s][1] > 0
                for s in ("backbone", "transformer", "mask head")
            )
            median = _row(table, "total (median)", 3)
            assert median[0] > 0 and _row(table, "images/s (median)", 3)[0] == pytest.approx(
                1000 / median[0], rel=0.02
            )
            flops = section.split(
                f"== FLOPs per image and peak memory, {scene} scene, batch {batch}:"
            )[1]
            backbone, mask_head = _row(flops, "backbone", 3), _row(flops, "mask head", 3)
            assert backbone[0] > 0 and backbone[0] == backbone[1]
            assert mask_head[2] > 1.0  # fewer mask-head FLOPs than the official all-query head
            assert _row(flops, "peak MiB (whole call)", 3)[0] >= 0
    summary = out.split("== Summary")[1]
    for scene in scenes:
        for batch in batches:
            row = re.search(
                r"^"
                + scene
                + r"\s+"
                + str(batch)
                + r"\s+"
                + NUMBER
                + r"\s+"
                + NUMBER
                + r"\s+(yes|NO)\s+",
                summary,
                re.M,
            )
            assert row and row.group(1) == row.group(2) and (row.group(3) == "yes" or not strict)
    assert (
        "both sides keep the same queries and give the same segments in every case: yes" in out
        or not strict
    )
    assert re.search(
        r"target >= 2.5x faster than the official code on the typical scene, batch 1: "
        + NUMBER
        + r"x, (MET|NOT MET \(short by "
        + NUMBER
        + r"x\))",
        out,
    )


def test_inference_benchmark_prints_all_figures(capsys):
    tool = _load_tool("inference")
    assert tool.main(INFERENCE_TINY + ["--batch-sizes", "1", "2"]) == 0
    out = capsys.readouterr().out
    _check_inference_output(tool, out, (1, 2))
    pp = out.split("== Post-processing of one image")[1]
    m = re.search(
        r"synthetic blob masks, 4 kept\s+4\s+(\d+)/(\d+)\s+"
        + NUMBER
        + r"%\s+"
        + NUMBER
        + r"\s+"
        + NUMBER
        + r"\s+"
        + NUMBER
        + "x",
        pp,
    )
    assert m and m.group(1) == m.group(2) and float(m.group(3)) >= 99.9
    assert re.search(
        r"^typical scene outputs\s+2\s+(\d+)/\1\s+", pp, re.M
    )  # the scene's 2 kept queries


def test_inference_benchmark_fvcore_counter(capsys):
    tool = _load_tool("inference")
    rc = tool.main(
        TINY_MODEL
        + [
            "--input-size",
            "64x64",
            "--output-size",
            "64x64",
            "--batch-sizes",
            "1",
            "--scenes",
            "crowded",
            "--pp-kept",
            "3",
            "--pp-iters",
            "1",
            "--flops",
            "fvcore",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "GFLOPs (fvcore: 1 per multiply-add)" in out and "fvcore did not count" in out
    flops = out.split("== FLOPs")[1]
    backbone, mask_head, total = (_row(flops, s, 3) for s in ("backbone", "mask head", "total"))
    assert backbone[0] == backbone[1] > 0 and total[0] < total[1]
    # 4 of 10 queries' masks; the first convolution's feature part once per image instead of once
    # per query
    assert 10 / 4 < mask_head[2] < 10


def test_inference_benchmark_rejects_bad_arguments(capsys):
    tool = _load_tool("inference")
    with pytest.raises(SystemExit):
        tool.parse_args(["--input-size", "800by1199"])
    assert "expected HxW" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.parse_args(["--warmup", "0"])
    assert "--warmup >= 1 or --flops off" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.parse_args(["--amp"])
    assert "--amp is float16 autocast on CUDA" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.parse_args(["--crowded-fraction", "1.5"])
    assert "--crowded-fraction must be in (0, 1)" in capsys.readouterr().err
    assert tool.parse_args([]).batch_sizes == [1, 4]


def test_scene_class_head_keeps_exactly_the_chosen_queries():
    """The fitted class head keeps the chosen queries with the official rule (softmax over all 251
    logits, argmax not no-object, score > threshold), one distinct COCO class each, even for nearly
    identical decoder outputs; unused slots never win."""
    tool = _load_tool("inference")
    g = torch.Generator().manual_seed(1)
    hs = torch.randn(1, 32, generator=g) + 1e-3 * torch.randn(
        20, 32, generator=g
    )  # collapsed queries
    slots = tool.coco_class_slots()
    weight, bias, kept, (margin, tolerance) = tool.scene_class_head(hs, 6, 0.85, slots, seed=3)
    assert weight.shape == (251, 32) and len(kept) == 6 and margin > 5 and 0 < tolerance < 1
    logits = hs @ weight.T + bias
    scores, labels = logits.softmax(-1).max(-1)
    keep = (labels != 250) & (scores > 0.85)
    assert keep.nonzero().flatten().tolist() == kept.tolist()
    assert set(labels[keep].tolist()) <= set(slots) and len(set(labels[keep].tolist())) == 6
    assert bool((labels[~keep] == 250).all())
    unused = [s for s in range(250) if s not in slots]
    assert bool((weight[unused] == 0).all()) and bool((bias[unused] == -50).all())
    # boundary: the largest no-object logit that keeps a query
    bounds = tool.keep_boundaries(logits[:, :250].double(), 0.85)
    for q in kept.tolist():
        for delta, expected in ((-1e-3, True), (1e-3, False)):
            row = logits[q].double().clone()
            row[250] = bounds[q] + delta
            p = row.softmax(-1)
            assert bool((p[:250].max() > 0.85) and p.argmax() != 250) == expected


def test_distinct_query_masks_spreads_the_queries_masks_apart():
    """A random model's queries get nearly the same mask; after ``distinct_query_masks_`` they
    differ (the per-pixel spread over queries grows by orders of magnitude) and the image features
    are unchanged."""
    tool = _load_tool("inference")
    args = tool.parse_args(
        TINY_MODEL + ["--input-size", "64x96", "--output-size", "64x96", "--pp-kept", "3"]
    )
    ref = profiling.build_reference_model(profiling.architecture(args), seed=0).eval()
    pipe = tool.OfficialPipeline(ref, None, "cpu")
    image = tool.load_scene_image(args.input_size)
    assert image.shape == (3, 64, 96) and image.dtype == torch.uint8

    def mask_spread():
        with torch.no_grad():
            masks = ref(pipe.normalize(tool.make_batch(image, 1, (64, 96))))["pred_masks"][0]
        return float(masks.std(0).mean() / masks.std())

    before = mask_spread()
    scene = tool.scene_state(ref, pipe, image, (64, 96))
    assert (
        scene["hs"].shape == (10, 128)
        and scene["features"].shape[:2] == (1, 128)
        and scene["mask"].shape == (1, 2, 3)
    )
    (low, high), gain = tool.distinct_query_masks_(
        ref,
        scene["hs"],
        lambda: scene["features"],
        lambda: ref.bbox_attention(scene["hs"][None], scene["memory"], mask=scene["mask"]),
    )
    assert 1 < low <= high and gain > 1
    after = mask_spread()
    assert before < 0.01 and after > 50 * before
    assert torch.equal(tool.scene_state(ref, pipe, image, (64, 96))["features"], scene["features"])


def test_synthetic_outputs_keep_exactly_the_requested_queries():
    tool = _load_tool("inference")
    things, stuff = list(range(1, 91)), list(range(92, 201))
    out = tool.synthetic_outputs(30, 12, (20, 25), things, stuff, seed=3)
    assert out["pred_logits"].shape == (1, 30, 251) and out["pred_masks"].shape == (1, 30, 20, 25)
    scores, labels = out["pred_logits"][0].softmax(-1).max(-1)
    kept = (labels != 250) & (scores > 0.85)
    assert int(kept.sum()) == 12 and bool((labels[~kept] == 250).all())
    kept_stuff = [int(c) for c in labels[kept] if int(c) in stuff]
    assert len(kept_stuff) == 3 and len(set(kept_stuff)) == 2  # one stuff class predicted twice


# ------------------------------------------------------------------------------------------
# training
TRAINING_TINY = TINY_MODEL + [
    "--image-size",
    "64x64",
    "--batch-size",
    "2",
    "--segments",
    "3",
    "--iters",
    "1",
    "--quickstart-iters",
    "1",
    "--quickstart-opts",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MAX_SIZE_TRAIN",
    "64",
    "MODEL.DETR.ENC_LAYERS",
    "1",
    "MODEL.DETR.DEC_LAYERS",
    "1",
]


def _check_step_table(tool, section: str, columns=("ours", "official")):
    rows = {s: _row(section, s, 3) for s in tool.STAGES + ("total",)}
    assert all(
        rows[s][0] > 0 and rows[s][1] > 0
        for s in ("forward", "mask head", "loss", "backward", "optimizer")
    )
    for side in (0, 1):
        assert sum(rows[s][side] for s in tool.STAGES) == pytest.approx(
            rows["total"][side], abs=0.003 * len(tool.STAGES)
        )
    median = _row(section, "total (median)", 3)
    its = _row(section, "iterations/s (median)", 3)
    assert its[0] == pytest.approx(1 / median[0], rel=0.05) and its[2] == pytest.approx(
        median[1] / median[0], rel=0.05
    )
    peak = _row(section, "peak step MiB", 3)
    assert peak[0] > 0 and peak[1] > 0


def test_training_benchmark_prints_all_figures(capsys):
    tool = _load_tool("training")
    assert tool.main(TRAINING_TINY) == 0
    out = capsys.readouterr().out
    stage2 = out.split("== Stage-2 training step")[1].split("quickstart joint step")[0]
    _check_step_table(tool, stage2)
    m = re.search(
        r"mask head computed for (\d+) queries \(the matched ones\) by ours, 20 \(all\) by "
        r"the official code",
        stage2,
    )
    segments = int(re.search(r"random images, (\d+) segments in all", out).group(1))
    assert m and int(m.group(1)) == segments
    assert "first-step mask losses agree (rel. diff <= 0.0001): yes" in stage2
    assert re.search(r"loss_mask ours " + NUMBER + " official " + NUMBER, stage2)

    quick = out.split("== Quickstart joint training step")[1]
    _check_step_table(tool, quick)
    groups = int(re.search(r"12 queries x (\d+) Group DETR group\(s\)", out).group(1))
    assert groups == 3  # the quickstart config's; each group is matched to every segment
    m = re.search(
        rf"mask head computed for (\d+) queries \(the matched ones\) after, {24 * groups} "
        r"before",
        quick,
    )
    segments = int(re.search(r"from the quickstart generator, (\d+) segments", out).group(1))
    assert m and int(m.group(1)) == groups * segments
    assert "first-step mask losses agree (rel. diff <= 0.0001): yes" in quick
    summary = out.split("== Summary")[1]
    assert re.search(
        r"stage 2: >= 3x faster than the official step: " + NUMBER + r"x, (MET|NOT MET)", summary
    )
    assert re.search(
        r"stage 2: >= 4x less peak step memory: " + NUMBER + r"x, (MET|NOT MET)", summary
    )
    assert re.search(
        r"quickstart: " + NUMBER + r"x faster, " + NUMBER + "x less peak step memory", summary
    )


def test_training_benchmark_rejects_bad_arguments(capsys):
    tool = _load_tool("training")
    for argv, message in (
        (["--warmup", "0"], "must be >= 1"),
        (["--amp"], "--amp is float16 autocast on CUDA"),
        (["--quickstart-opts", "SOLVER.IMS_PER_BATCH"], "KEY VALUE pairs"),
    ):
        with pytest.raises(SystemExit):
            tool.parse_args(argv)
        assert message in capsys.readouterr().err


def test_training_batch_targets_are_disjoint_panoptic_segments():
    tool = _load_tool("training")
    args = tool.parse_args(["--image-size", "64x96", "--batch-size", "2", "--segments", "5"])
    is_thing = [True] * 80 + [False] * 53
    batch = tool.make_batch(args, is_thing, torch.device("cpu"))
    assert len(batch) == 2
    for x in batch:
        assert x["image"].shape == (3, 64, 96) and x["image"].dtype == torch.uint8
        inst = x["instances"]
        masks = inst.gt_masks.tensor
        assert masks.shape[1:] == (64, 96) and bool(
            (masks.sum(0) == 1).all()
        )  # every pixel in exactly one
        assert bool(masks.flatten(1).any(1).all())
        is_stuff = [c >= 80 for c in inst.gt_classes.tolist()]
        assert (
            is_stuff == sorted(is_stuff, reverse=True) and 1 <= sum(is_stuff) <= 2
        )  # stuff bands first
        boxes = inst.gt_boxes.tensor
        assert bool((boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all())
    targets = tool.official_targets(batch, torch.arange(133) * 2)
    inst = batch[0]["instances"]
    assert targets[0]["labels"].tolist() == (inst.gt_classes * 2).tolist()
    x0, y0, x1, y1 = inst.gt_boxes.tensor[0].tolist()
    assert targets[0]["boxes"][0].tolist() == pytest.approx(
        [(x0 + x1) / 192, (y0 + y1) / 128, (x1 - x0) / 96, (y1 - y0) / 64]
    )
    assert torch.equal(targets[0]["masks"], inst.gt_masks.tensor)


# ------------------------------------------------------------------------------------------ CUDA
# (tools/gpu_check.sh)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_cuda_inference_benchmark_amp(capsys):
    tool = _load_tool("inference")
    assert tool.main(INFERENCE_TINY + ["--device", "cuda", "--amp", "--batch-sizes", "1", "2"]) == 0
    out = capsys.readouterr().out
    assert "device cuda" in out and "float16 autocast" in out
    _check_inference_output(tool, out, (1, 2), strict=False)


@needs_cuda
def test_cuda_training_benchmark_amp(capsys):
    tool = _load_tool("training")
    assert tool.main(TRAINING_TINY + ["--device", "cuda", "--amp"]) == 0
    out = capsys.readouterr().out
    assert "device cuda" in out and "float16 autocast + GradScaler" in out
    _check_step_table(
        tool, out.split("== Stage-2 training step")[1].split("quickstart joint step")[0]
    )
    _check_step_table(tool, out.split("== Quickstart joint training step")[1])
    assert out.count("first-step mask losses agree (rel. diff <= 0.01): yes") == 2


def test_evaluation_benchmark_prints_all_figures(capsys, tmp_path):
    """Tiny sets; the tool itself raises if any method's PQ/SQ/RQ differs from pq_compute's."""
    tool = _load_tool("evaluation")
    keep = str(tmp_path / "data")
    tool.main(
        [
            "--copies",
            "1",
            "--synthetic",
            "3",
            "--size",
            "24",
            "32",
            "--repeat",
            "1",
            "--model-ms",
            "1",
            "--keep",
            keep,
        ]
    )
    out = capsys.readouterr().out
    assert "coco_sample: 2 images of 427x640" in out and "synthetic: 3 images of 24x32" in out
    for label in (
        "d2",
        "pq_compute",
        "pq_compute 1 core",
        "fast cold",
        "fast cold 1 thread",
        "fast warm",
        "fast warm 1 thread",
    ):
        assert (
            len(re.findall(r"^" + re.escape(label) + r"\s+" + NUMBER + r"\s*$", out, re.M)) >= 2
        ), label
    assert len(re.findall(r"inside inference_on_dataset, stand-in model", out)) == 2
    assert re.search(
        r"pq_compute / fast cold \(added\) = "
        + NUMBER
        + r"x|fast cold \(added\) is below the timing noise",
        out,
    )
    assert os.path.isfile(
        os.path.join(keep, "coco", "pred.json")
    )  # --keep keeps the generated data
    assert logging.root.manager.disable == logging.NOTSET  # the tool's log silencing is undone


def test_evaluation_benchmark_rejects_bad_arguments(capsys, tmp_path):
    tool = _load_tool("evaluation")
    with pytest.raises(SystemExit):
        tool.main(["--copies", "0", "--synthetic", "0"])
    assert "not both 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["--model-ms", "-1"])
    assert "--model-ms must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["--keep", str(tmp_path)])
    assert "already exists" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- fusion
def test_fusion_benchmark_prints_all_scenes(capsys):
    """benchmarks/fusion.py: the fusion now vs before on every scene (it checks they agree)."""
    _load_tool("fusion").main(["--threads", "1", "--iters", "1"])
    out = capsys.readouterr().out
    for label in ("COCO sample 0, 20 kept", "COCO sample 1, 34 kept"):
        _row(out, label, 3)
    for kept in (15, 45):
        _row(out, f"random, {kept} of 100 kept", 3)
    assert "identical maps and segments" in out


# ------------------------------------------------------------------------------------- data loading
def test_data_loading_benchmark_compares_the_mapper_before_and_now(capsys):
    """benchmarks/data_loading.py: the training mapper now vs before issue 25, vs the new check
    with the old targets and vs Detectron2's same-size resize, on the quickstart and COCO sample
    images (it checks the outputs are identical)."""
    _load_tool("data_loading").main(["--images", "4", "--repeats", "1", "--passes", "1"])
    out = capsys.readouterr().out
    row = _row(out, "quickstart 128x128, 4 images", 7)
    *times, now = row[:4]
    ratios = row[4:]
    assert min(times + [now]) > 0
    for t, ratio in zip(times, ratios):
        assert abs(ratio - t / now) < 0.01 + 0.01 * ratio
    _row(out, "COCO sample, 2 images x 1", 7)
    assert "identical images and targets on all sides" in out
