#!/usr/bin/env python
"""Exported DetrPanoptic (TorchScript, ONNX Runtime) against eager PyTorch: images/s, end to end.

One model (default: the official R50 panoptic layout, 251 dataset-id class logits, COCO metadata;
random weights), one random image of ``--input-size`` (default 800x1199: a 427x640 COCO image at
short side 800), panoptic output at ``--output-size``. The score threshold is set so that ``--kept``
queries are kept on that image (random weights keep none at DETR's 0.85; the class head's no-object
and unused-slot biases are lowered by 10 so every query predicts a class), so the mask head and the
fusion do real work. Pipelines, all from the preprocessed image to the panoptic map:

* eager: ``model([{"image", "height", "width"}])`` (Detectron2's call) under
  ``torch.inference_mode`` (as ``DetrPanopticPredictor``);
* eager-before: the same on a copy of the model computing as before issue 25's speed changes
  (``tests.utils.speed_oracles.old_computation``: unfolded frozen BatchNorm, NCHW backbone,
  weight-returning attention) under ``torch.no_grad``, so the speed-up shows in the same run;
* torchscript: the file written by ``detr_d2.export.save_torchscript``, ``torch.jit.load``-ed,
  ``module(image, [H, W])`` (network traced, fusion scripted);
* onnxruntime: the file of ``detr_d2.export.export_onnx`` in an ``InferenceSession`` (intra-op
  threads = torch's), then ``PanopticPostprocessor`` (numpy).

Each pipeline gets ``--warmup`` untimed passes, then ``--iters`` rounds of one timed pass per
pipeline, in rotating order so that load changes hit all alike. Printed: ms per image, images/s and
the ratio to eager, the median process CPU time per image and its ratio (with ``--threads 1`` the
figure least disturbed by other processes on a shared machine), plus the kept queries / segments of
each (same run, same machine). On the CPU the process runs with ``CPU_REUSE_FREED_MEMORY`` as the
tools do (``--cpu-reuse-freed-memory off``: without it; every pipeline shares the setting).
``--device cuda``: eager and TorchScript on the GPU (the TorchScript
file is exported there), ONNX Runtime with its ``CUDAExecutionProvider`` when the installed
onnxruntime has one (``onnxruntime-gpu``), else skipped.

    python -m benchmarks.export --device cpu --threads 2
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from benchmarks.utils import (
    add_architecture_arguments,
    add_device_arguments,
    architecture,
    hw_size,
    print_done,
)

PIPELINES = ("eager", "eager-before", "torchscript", "onnxruntime")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_device_arguments(p, "torch / onnxruntime CPU threads (default: torch's default)")
    p.add_argument(
        "--input-size",
        type=hw_size(32),
        default=(800, 1199),
        help="network input HxW (default 800x1199)",
    )
    p.add_argument(
        "--output-size",
        type=hw_size(),
        default=(427, 640),
        help="panoptic output HxW (default 427x640)",
    )
    p.add_argument(
        "--kept", type=int, default=20, help="queries kept on the benchmark image (default 20)"
    )
    p.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES))
    p.add_argument("--warmup", type=int, default=1, help="untimed passes per pipeline (default 1)")
    p.add_argument("--iters", type=int, default=3, help="timed passes per pipeline (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cpu-reuse-freed-memory",
        choices=("on", "off"),
        default="on",
        help="CPU_REUSE_FREED_MEMORY for the whole process, as tools/train_net.py and "
        "DetrPanopticPredictor apply it (default on; detr_d2/utils/cpu_memory.py)",
    )
    add_architecture_arguments(p)
    args = p.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        p.error("--iters must be >= 1 and --warmup >= 0")
    if not 1 <= args.kept <= args.num_queries:
        p.error(f"--kept must be in 1..--num-queries ({args.num_queries}), got {args.kept}")
    if "eager" not in args.pipelines:
        p.error("--pipelines must include eager (the reference of the ratios)")
    return args


def build_model(args: argparse.Namespace, device, image):
    """The random model on ``device`` with its threshold between the ``--kept``-th and the next
    score."""
    import torch
    from detectron2.modeling import build_model as d2_build_model

    from benchmarks.utils import detr_config
    from detr_d2.export import PanopticNetwork
    from detr_d2.modeling.panoptic_inference import panoptic_queries

    torch.manual_seed(args.seed)
    cfg = detr_config(architecture(args), device)
    model = d2_build_model(cfg).eval()
    with (
        torch.no_grad()
    ):  # the random class head often prefers no-object / unused slots: rule them out
        not_a_class = torch.ones_like(model.class_embed.bias, dtype=torch.bool)
        not_a_class[:-1] = model.label_map < 0 if model.label_map is not None else False
        model.class_embed.bias[not_a_class] -= 10.0
        logits = PanopticNetwork(model)(image.float().to(device))[0]
        scores = logits.softmax(-1).max(-1).values[panoptic_queries(logits, -1.0, model.label_map)]
        scores = scores.sort(descending=True).values
    if len(scores) < args.kept:
        raise SystemExit(
            f"error: {len(scores)} queries predict a class on this image: use --kept <= "
            f"{len(scores)}"
        )
    upper = float(scores[args.kept - 1])
    lower = float(scores[args.kept]) if len(scores) > args.kept else 0.0
    model.object_mask_threshold = (upper + lower) / 2
    return model, cfg


def make_pipelines(args, model, cfg, image, device, workdir: str) -> Dict[str, Callable[[], int]]:
    """name -> callable running one image end to end, returning its number of segments."""
    import torch

    from detr_d2.export import (
        PanopticPostprocessor,
        export_metadata,
        export_onnx,
        export_torchscript,
        save_torchscript,
    )

    h_out, w_out = args.output_size
    meta = export_metadata(model, cfg)
    pipelines = {}
    image_dev = image.to(device)

    def eager():
        with torch.inference_mode():
            return len(
                model([{"image": image_dev, "height": h_out, "width": w_out}])[0]["panoptic_seg"][1]
            )

    pipelines["eager"] = eager
    if "eager-before" in args.pipelines:
        import copy
        import weakref

        from tests.utils.speed_oracles import old_computation

        before = copy.deepcopy(model)
        switch = old_computation(before)
        switch.__enter__()  # for the model's lifetime
        weakref.finalize(before, switch.__exit__, None, None, None)

        def eager_before():
            with torch.no_grad():
                inputs = [{"image": image_dev, "height": h_out, "width": w_out}]
                return len(before(inputs)[0]["panoptic_seg"][1])

        pipelines["eager-before"] = eager_before
    if "torchscript" in args.pipelines:
        t0 = time.perf_counter()
        path = os.path.join(workdir, "model.ts")
        save_torchscript(export_torchscript(model, image, meta), path, meta)
        module = torch.jit.load(path, map_location=device)
        size_mib = os.path.getsize(path) / 2**20
        print(
            f"torchscript: exported in {time.perf_counter() - t0:.0f} s ({size_mib:.0f} MiB)",
            flush=True,
        )

        def torchscript():
            with torch.no_grad():
                return len(module(image_dev, [h_out, w_out])["segment_ids"])

        pipelines["torchscript"] = torchscript
    if "onnxruntime" in args.pipelines:
        try:
            import onnxruntime as ort
        except ImportError:
            print("onnxruntime: skipped (not installed: pip install 'detr_d2[export]')")
        else:
            provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
            if provider not in ort.get_available_providers():
                print(
                    f"onnxruntime: skipped (this onnxruntime has no {provider}; install "
                    "onnxruntime-gpu)"
                )
            else:
                t0 = time.perf_counter()
                data = export_onnx(model, image.to(model.device), meta)
                options = ort.SessionOptions()
                if torch.get_num_threads():
                    options.intra_op_num_threads = torch.get_num_threads()
                session = ort.InferenceSession(data, options, providers=[provider])
                post = PanopticPostprocessor.from_onnx_session(session)
                print(
                    f"onnxruntime {ort.__version__} ({provider}): exported in "
                    f"{time.perf_counter() - t0:.0f} s "
                    f"({len(data) / 2**20:.0f} MiB)",
                    flush=True,
                )
                feed = {"image": image.float().numpy()}

                def onnxruntime():
                    outputs = session.run(None, feed)
                    return len(post(outputs, image.shape[1:], (h_out, w_out))[1])

                pipelines["onnxruntime"] = onnxruntime
    return pipelines


def time_pipelines(
    pipelines: Dict[str, Callable], args, device
) -> Tuple[Dict[str, List[float]], Dict[str, List[float]], Dict[str, int]]:
    """Wall-clock and process CPU seconds of each timed pass (CPU time: robust to other processes
    on a shared machine at ``--threads 1``), and each pipeline's segment count."""
    from tqdm import tqdm

    from benchmarks.utils import synchronize

    names = list(pipelines)
    plan = [(n, False) for _ in range(args.warmup) for n in names]
    for i in range(args.iters):
        k = i % len(names)
        plan += [(n, True) for n in names[k:] + names[:k]]
    times = {n: [] for n in names}
    cpu_times = {n: [] for n in names}
    results = {}
    for name, timed in tqdm(plan, desc="passes", unit="pass", file=sys.stderr):
        synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        results[name] = pipelines[name]()
        synchronize(device)
        if timed:
            times[name].append(time.perf_counter() - t0)
            cpu_times[name].append(time.process_time() - c0)
    return times, cpu_times, results


def apply_cpu_reuse_flag(args: argparse.Namespace, device) -> None:
    """``--cpu-reuse-freed-memory on``: the process setting the tools apply on the CPU
    (``detr_d2.utils.cpu_memory``); printed, as it holds for every pipeline of the run."""
    if device.type != "cpu":
        return
    from detr_d2.utils.cpu_memory import reuse_freed_cpu_memory

    reused = args.cpu_reuse_freed_memory == "on" and reuse_freed_cpu_memory()
    print(f"CPU_REUSE_FREED_MEMORY: {'on' if reused else 'off'} (all pipelines)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    from benchmarks.utils import format_table, print_contention_note, setup_benchmark_device

    device = setup_benchmark_device(args.device, args.threads)
    if device is None:
        return 2
    print_contention_note(device)
    apply_cpu_reuse_flag(args, device)
    t_start = time.perf_counter()
    g = torch.Generator().manual_seed(args.seed)
    image = torch.randint(0, 256, (3, *args.input_size), dtype=torch.uint8, generator=g)
    model, cfg = build_model(args, device, image)
    print(
        f"model: ResNet-{args.depth}, hidden {args.hidden_dim}, "
        f"{args.enc_layers}+{args.dec_layers} layers, "
        f"{args.num_queries} queries, 251 class logits; random weights; threshold "
        f"{model.object_mask_threshold:.6f} "
        f"keeps {args.kept} queries; input {args.input_size[0]}x{args.input_size[1]}, output "
        f"{args.output_size[0]}x{args.output_size[1]}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as workdir:
        pipelines = make_pipelines(args, model, cfg, image, device, workdir)
        times, cpu_times, results = time_pipelines(pipelines, args, device)
    eager = sum(times["eager"]) / len(times["eager"])
    eager_cpu = statistics.median(cpu_times["eager"])
    rows = []
    for name, ts in times.items():
        mean = sum(ts) / len(ts)
        cpu = statistics.median(cpu_times[name])
        rows.append(
            [
                name,
                f"{mean * 1e3:.0f}",
                f"{1 / mean:.3f}",
                f"{eager / mean:.2f}",
                f"{cpu * 1e3:.0f}",
                f"{eager_cpu / cpu:.2f}",
                results[name],
            ]
        )
    print(
        f"\n== {device.type.upper()}, {torch.get_num_threads()} threads: one image end to "
        "end (network + panoptic "
        f"fusion), mean of {args.iters} timed passes per pipeline (interleaved) after "
        f"{args.warmup} warm-up =="
    )
    print(
        format_table(
            [
                "pipeline",
                "ms/img",
                "images/s",
                "speed vs eager",
                "CPU ms/img (median)",
                "CPU speed vs eager",
                "segments",
            ],
            rows,
        )
    )
    line = ", ".join(f"{r[0]} {r[2]} img/s ({r[3]}x)" for r in rows)
    print(f"\nbenchmark: {device.type} {args.input_size[0]}x{args.input_size[1]}: {line}")
    print_done(t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
