#!/usr/bin/env python
"""Where one eager inference pass spends its time, before and after issue 25's speed changes, beside
ONNX Runtime's per-node profile of the exported network (same model, image and kept queries as
``benchmarks.export``).

Printed for ``before`` (``tests.utils.speed_oracles.old_computation``), ``after`` (the model as
shipped) and ``onnxruntime``: process CPU seconds per part (backbone, input projection,
transformer encoder / decoder, attention maps, mask head, the rest: heads, fusion, pre- and
post-processing; median of ``--iters`` passes, the parts interleaved with the sides), and the top
operators (``torch.profiler`` self time; ONNX Runtime's ``enable_profiling`` node events grouped
by operator type: both wall-clock). ONNX Runtime's parts come from its node names
(``/backbone/...``): its CPU total split in proportion to the node times.
Use ``--threads 1`` on a shared machine: CPU time of one thread is what other processes disturb
least.

    python -m benchmarks.profile_inference --threads 1
"""

import argparse
import collections
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

PARTS = {
    "backbone": "backbone",
    "input_proj": "input projection",
    "transformer.encoder": "encoder",
    "transformer.decoder": "decoder",
    "bbox_attention": "attention maps",
    "mask_head": "mask head",
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from benchmarks.export import parse_args as export_args

    argv = list(argv if argv is not None else sys.argv[1:])
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--top", type=int, default=12, help="operators listed per side (default 12)")
    own, rest = p.parse_known_args(argv)
    args = export_args(rest)
    args.top = own.top
    return args


def _part_timer(model, times: Dict[str, float]) -> List:
    handles = []
    for name, label in PARTS.items():
        module = model.get_submodule(name)

        def pre(_m, _i, label=label):
            times[label] -= time.process_time()

        def post(_m, _i, _o, label=label):
            times[label] += time.process_time()

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def profile_eager(model, inputs, iters: int, top: int):
    import torch
    from torch.profiler import ProfilerActivity, profile

    parts: Dict[str, List[float]] = collections.defaultdict(list)
    for _ in range(iters):
        times: Dict[str, float] = collections.defaultdict(float)
        handles = _part_timer(model, times)
        t0 = time.process_time()
        with torch.inference_mode():
            model(inputs)
        total = time.process_time() - t0
        for h in handles:
            h.remove()
        times["rest"] = total - sum(times.values())
        times["total"] = total
        for k, v in times.items():
            parts[k].append(v)
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(inputs)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    ops = [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in events]
    return {k: statistics.median(v) for k, v in parts.items()}, ops


def profile_onnxruntime(model, cfg, image, threads: int, iters: int, top: int):
    import onnxruntime as ort

    from detr_d2.export import export_metadata, export_onnx

    data = export_onnx(model, image, export_metadata(model, cfg))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = os.path.join(folder, "ort")
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        feed = {"image": image.float().numpy()}
        session.run(None, feed)  # warm-up
        totals = []
        for _ in range(iters):
            t0 = time.process_time()
            session.run(None, feed)
            totals.append(time.process_time() - t0)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    nodes = nodes[len(nodes) * 1 // (iters + 1) :]  # the timed runs
    by_op: Dict[str, List[float]] = collections.defaultdict(lambda: [0.0, 0])
    parts: Dict[str, float] = collections.defaultdict(float)
    for e in nodes:
        seconds = e["dur"] / 1e6 / iters
        op = by_op[e["args"].get("op_name", "?")]
        op[0] += seconds
        op[1] += 1
        path = e["name"].split("/")
        first = path[1] if len(path) > 2 else ""
        second = path[2] if len(path) > 3 else ""
        key = f"{first}.{second}" if first == "transformer" else first
        parts[PARTS.get(key, "rest")] += seconds
    # node events are wall-clock: the CPU total is split in proportion to them (rest = nodes
    # outside the named parts)
    total, node_time = statistics.median(totals), sum(parts.values())
    parts = {k: v / node_time * total for k, v in parts.items()}
    parts["total"] = total
    ops = sorted(((k, v[0], v[1] // iters) for k, v in by_op.items()), key=lambda r: -r[1])[:top]
    return dict(parts), ops


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    from benchmarks.export import apply_cpu_reuse_flag, build_model
    from benchmarks.utils import format_table, print_contention_note, setup_benchmark_device
    from tests.utils.speed_oracles import old_computation

    device = setup_benchmark_device("cpu", args.threads)
    if device is None:
        return 2
    print_contention_note(device)
    apply_cpu_reuse_flag(args, device)
    g = torch.Generator().manual_seed(args.seed)
    image = torch.randint(0, 256, (3, *args.input_size), dtype=torch.uint8, generator=g)
    model, cfg = build_model(args, device, image)
    inputs = [{"image": image, "height": args.output_size[0], "width": args.output_size[1]}]
    before = copy.deepcopy(model)
    results = {}
    with old_computation(before):
        for m in (before, model):
            with torch.inference_mode():
                m(inputs)  # warm-up
        results["before"] = profile_eager(before, inputs, args.iters, args.top)
        results["after"] = profile_eager(model, inputs, args.iters, args.top)
    try:
        results["onnxruntime"] = profile_onnxruntime(
            model, cfg, image, torch.get_num_threads(), args.iters, args.top
        )
    except ImportError:
        print("onnxruntime: skipped (not installed: pip install 'detr_d2[export]')")
    names = list(results)
    labels = list(PARTS.values()) + ["rest", "total"]
    rows = [
        [label] + [f"{results[n][0].get(label, 0.0) * 1e3:.0f}" for n in names] for label in labels
    ]
    print(
        f"\n== CPU ms per image by part ({torch.get_num_threads()} threads, input "
        f"{args.input_size[0]}x{args.input_size[1]}, {args.kept} kept queries; median of "
        f"{args.iters}) =="
    )
    print(format_table(["part"] + names, rows))
    totals = {n: results[n][0]["total"] for n in names}
    print(", ".join(f"{n} {totals['before'] / totals[n]:.2f}x of before" for n in names))
    for n in names:
        print(f"\n-- {n}: top operators (self CPU s per image, calls) --")
        print(
            format_table(
                ["operator", "s", "calls"], [[k, f"{s:.3f}", c] for k, s, c in results[n][1]]
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
