"""The eager panoptic fusion now (``detr_d2.modeling.panoptic_inference.panoptic_fusion``, running
the one torch fusion ``detr_d2.modeling.fusion.fuse_panoptic``) against the eager fusion as it was
before the torch/TorchScript/numpy copies were made one (``tests.utils.legacy_fusion``), same
inputs, timed passes alternating (ABBA...), results checked equal.

Scenes: outputs built from the two real COCO sample annotations (20 and 34 kept queries, 800-pixel
input, original output size; ``tests.utils.fusion_inputs``) and random confident outputs with 15 and
45 kept of 100 queries, 250 slots, input 800x1199, output 427x640 (the inference benchmark's
typical and crowded scenes).

Example::

    python -m benchmarks.fusion --threads 2 --iters 16
"""

import argparse
import os
import statistics
import time

import torch

from detr_d2.modeling.panoptic_inference import panoptic_fusion, panoptic_queries
from tests.utils import legacy_fusion
from tests.utils.fusion_inputs import coco_sample_fusion_inputs


def _scenes():
    scenes = {}
    for idx in (0, 1):
        logits, masks, image_size, output_size, is_thing, label_map = coco_sample_fusion_inputs(idx)
        kept = panoptic_queries(logits, 0.85, label_map)
        scenes[f"COCO sample {idx}, {len(kept)} kept"] = (
            logits, masks[kept], image_size, output_size, is_thing, label_map, kept,
        )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    for kept in (15, 45):
        logits = torch.randn(100, 251, generator=g)
        logits[:, 250] += 12
        queries = torch.randperm(100, generator=g)[:kept].sort().values
        logits[queries, 250] -= 12
        logits[queries, torch.randperm(200, generator=g)[:kept] + 1] += 12
        masks = torch.randn(kept, 200, 300, generator=g) * 4
        is_thing, label_map = torch.arange(250) < 120, torch.arange(250)
        scenes[f"random, {kept} of 100 kept"] = (
            logits, masks, (800, 1199), (427, 640), is_thing, label_map, queries,
        )  # fmt: skip
    return scenes


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--iters", type=int, default=16, help="timed passes per side (default 16)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} threads, torch {torch.__version__}, load {os.getloadavg()[0]:.1f}")
    print(f"{'scene':28s} {'before ms':>10s} {'now ms':>10s} {'now/before':>11s}")
    for name, (logits, masks, size, out_size, is_thing, label_map, kept) in _scenes().items():
        kw = {"threshold": 0.85, "label_map": label_map, "mask_queries": kept}
        sides = {
            "before": lambda: legacy_fusion.panoptic_fusion(
                logits, masks, size, out_size, is_thing, **kw
            ),
            "now": lambda: panoptic_fusion(logits, masks, size, out_size, is_thing, **kw),
        }
        results = {k: f() for k, f in sides.items()}  # warm-up, and the check
        assert torch.equal(results["now"][0], results["before"][0])
        assert results["now"][1] == results["before"][1]
        times = {k: [] for k in sides}
        for i in range(args.iters):
            for k in ("before", "now") if i % 2 == 0 else ("now", "before"):
                t = time.perf_counter()
                sides[k]()
                times[k].append(time.perf_counter() - t)
        before, now = (statistics.median(times[k]) * 1e3 for k in ("before", "now"))
        print(f"{name:28s} {before:10.1f} {now:10.1f} {now / before:11.3f}")
    print("medians; identical maps and segments on both sides")


if __name__ == "__main__":
    main()
