#!/usr/bin/env python
"""Training benchmark: iterations/s of ``DetrPanoptic`` at a fixed small configuration, data-free.

One batch of random RGB images with random panoptic targets (stuff bands plus thing rectangles and
ellipses painted over them, COCO's 133 classes: contiguous ids 0..79 things, 80..132 stuff) is
built once on the device; every iteration then runs exactly Detectron2's ``SimpleTrainer.run_step``
(``--amp off``) or ``AMPTrainer.run_step`` (``--amp on``: ``torch.autocast`` with float16 and a
``GradScaler`` on CUDA, bfloat16 without a scaler on CPU) minus the data loader:

    loss_dict = model(batch); losses = sum(loss_dict.values())
    optimizer.zero_grad(); losses.backward(); optimizer.step()

with the optimiser of ``tools/train_net.py`` (``build_detr_optimizer``: AdamW, backbone LR x0.1,
full-model gradient clipping 0.1). Seconds per iteration are split into forward (normalisation,
padding, network), loss (target preparation, Hungarian matching, losses), backward, and optimizer
(zero_grad + clipping + step); ``other`` is the rest (summing the losses, hooks). With several ``--amp``
settings each has its own model and the timed iterations alternate between them (ABBA...), so both
see the same machine load.

Example (the figures in the README)::

    python tools/benchmark_training.py --device cpu --threads 2
    python tools/benchmark_training.py --device cuda --amp off on
"""
import argparse
import contextlib
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from benchmark_utils import hw_size  # also puts the checkout on sys.path for the test oracle

STAGES = ("forward", "loss", "backward", "optimizer", "other")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: leave torch's default)")
    p.add_argument("--amp", nargs="+", choices=("on", "off"), default=["off"],
                   help="mixed precision setting(s) to run, e.g. '--amp off on' (default off)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per setting (default 1)")
    p.add_argument("--iters", type=int, default=3, help="timed iterations per setting (default 3)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--image-size", type=hw_size(32), default=(256, 256), help="HxW of every image (default 256x256)")
    p.add_argument("--segments", type=int, default=6, help="thing segments per image (plus 2 stuff bands)")
    p.add_argument("--depth", type=int, default=50, choices=(18, 34, 50, 101), help="ResNet depth (default 50)")
    p.add_argument("--hidden-dim", type=int, default=256)
    p.add_argument("--enc-layers", type=int, default=6)
    p.add_argument("--dec-layers", type=int, default=6)
    p.add_argument("--dim-feedforward", type=int, default=2048)
    p.add_argument("--num-queries", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.batch_size < 1 or args.segments < 0:
        p.error("--iters and --batch-size must be >= 1, --warmup and --segments >= 0")
    return args


def build_cfg(args: argparse.Namespace):
    """Base-DETR (the official recipe) resized to the benchmark configuration."""
    from detectron2.config import get_cfg

    import detr_d2

    cfg = get_cfg()
    detr_d2.add_detr_config(cfg)
    cfg.merge_from_file(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "Base-DETR.yaml"))
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.RESNETS.DEPTH = args.depth
    if args.depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    d = cfg.MODEL.DETR
    d.HIDDEN_DIM, d.DIM_FEEDFORWARD = args.hidden_dim, args.dim_feedforward
    d.ENC_LAYERS, d.DEC_LAYERS, d.NUM_OBJECT_QUERIES = args.enc_layers, args.dec_layers, args.num_queries
    cfg.DATASETS.TRAIN = ("coco_2017_train_panoptic",)  # metadata only (133 classes); no files are read
    cfg.DATASETS.TEST = ()
    return cfg


def make_batch(args: argparse.Namespace, is_thing: Sequence[bool], device) -> List[Dict]:
    """Random images and panoptic targets: per image two stuff bands (top/bottom, random stuff classes)
    and ``--segments`` thing rectangles/ellipses painted in order (later ones occlude earlier ones);
    segments left with no pixel are dropped. Instances: ``gt_classes`` (contiguous), ``gt_masks``
    (BitMasks), ``gt_boxes`` (XYXY pixels from the masks), ``gt_is_crowd`` (all False)."""
    import torch
    from detectron2.structures import BitMasks, Instances

    g = torch.Generator().manual_seed(args.seed)
    things = [c for c, t in enumerate(is_thing) if t]
    stuff = [c for c, t in enumerate(is_thing) if not t]
    h, w = args.image_size
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    batch = []
    for _ in range(args.batch_size):
        seg = torch.zeros((h, w), dtype=torch.int64)
        classes = []
        split = int(torch.randint(h // 4, 3 * h // 4 + 1, (1,), generator=g))
        seg[split:] = 1
        classes += [stuff[int(i)] for i in torch.randint(len(stuff), (2,), generator=g)]
        for k in range(args.segments):
            cy, cx = (float(v) for v in torch.rand(2, generator=g) * torch.tensor([h, w]))
            ry, rx = (float(v) for v in (0.05 + 0.2 * torch.rand(2, generator=g)) * torch.tensor([h, w]))
            if k % 2:
                shape = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            else:
                shape = ((yy - cy).abs() <= ry) & ((xx - cx).abs() <= rx)
            seg[shape] = len(classes)
            classes.append(things[int(torch.randint(len(things), (1,), generator=g))])
        present = [i for i in range(len(classes)) if bool((seg == i).any())]
        masks = torch.stack([seg == i for i in present])
        inst = Instances((h, w))
        inst.gt_masks = BitMasks(masks)
        inst.gt_boxes = inst.gt_masks.get_bounding_boxes()
        inst.gt_classes = torch.tensor([classes[i] for i in present], dtype=torch.int64)
        inst.gt_is_crowd = torch.zeros(len(present), dtype=torch.bool)
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        batch.append({"image": image.to(device), "instances": inst.to(device), "height": h, "width": w})
    return batch


class TrainRunner:
    """One setting (AMP on or off): its own model and optimiser built from the same seed, the batch on the
    device, the stages instrumented (``with`` block). ``step(record)`` runs one iteration as Detectron2's
    ``SimpleTrainer.run_step`` / ``AMPTrainer.run_step`` do (without the data loader); ``times()`` gives
    the mean seconds per stage over the recorded iterations."""

    def __init__(self, args: argparse.Namespace, amp: bool, device):
        import torch
        from detectron2.modeling import build_model

        from detr_d2.engine.optimizer import build_detr_optimizer

        self.amp, self.device = amp, device
        torch.manual_seed(args.seed)
        cfg = build_cfg(args)
        self.model = build_model(cfg)
        self.model.train()
        self.optimizer = build_detr_optimizer(cfg, self.model)
        self.batch = make_batch(args, self.model.is_thing.tolist(), device)
        self.use_scaler = amp and device.type == "cuda"
        self.scaler = torch.cuda.amp.GradScaler() if self.use_scaler else None
        self.amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        self.last_loss = float("nan")
        self.iteration = 0

    def __enter__(self) -> "TrainRunner":
        from benchmark_utils import StageTimer

        self.timer = StageTimer(self.device)
        self.timer.wrap_method(self.model, "preprocess_image", "forward")
        self.timer.wrap_method(self.model, "forward_network", "forward")
        self.timer.wrap_method(self.model, "prepare_targets", "loss")
        self.timer.hook_modules({"loss": [self.model.criterion]})
        return self

    def __exit__(self, *exc) -> None:
        self.timer.remove()

    def step(self, record: bool) -> None:
        import torch

        timer = self.timer
        timer.start_iteration()
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp else contextlib.nullcontext()
        with autocast:  # AMPTrainer: the forward and the loss sum under autocast
            loss_dict = self.model(self.batch)
            losses = sum(loss_dict.values())
        if not torch.isfinite(losses):
            raise FloatingPointError(f"loss became {losses.item()} at iteration {self.iteration}: {loss_dict}")
        with timer.stage("optimizer"):
            self.optimizer.zero_grad()
        with timer.stage("backward"):
            (self.scaler.scale(losses) if self.use_scaler else losses).backward()
        with timer.stage("optimizer"):
            if self.use_scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        timer.end_iteration(record=record)
        self.last_loss = float(losses)
        self.iteration += 1

    def times(self) -> Dict[str, float]:
        from benchmark_utils import summarize_iterations

        return summarize_iterations(self.timer.history)


def run_settings(args: argparse.Namespace, device) -> Dict[str, TrainRunner]:
    """Warm-up iterations of every setting, then ``--iters`` rounds of one timed iteration per setting,
    alternating the order (ABBA...) so that load changes hit all settings alike."""
    from detectron2.utils.events import EventStorage
    from tqdm import tqdm

    with contextlib.ExitStack() as stack:
        stack.enter_context(EventStorage(0))
        runners = {amp: stack.enter_context(TrainRunner(args, amp == "on", device)) for amp in args.amp}
        order = list(runners.values())
        plan = [(r, False) for _ in range(args.warmup) for r in order]
        for i in range(args.iters):
            plan += [(r, True) for r in (order if i % 2 == 0 else order[::-1])]
        for runner, record in tqdm(plan, desc="training", unit="it", leave=False, file=sys.stderr):
            runner.step(record)
    return runners


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    from benchmark_utils import format_table, print_contention_note, setup_benchmark_device

    device = setup_benchmark_device(args.device, args.threads)
    if device is None:
        return 2
    h, w = args.image_size
    print(f"config: ResNet-{args.depth} (frozen BN, res2..res5), hidden {args.hidden_dim}, {args.enc_layers}+"
          f"{args.dec_layers} layers, FFN {args.dim_feedforward}, {args.num_queries} queries, 133 classes, aux losses, "
          f"mask head on; batch {args.batch_size} x {h}x{w} random images, {args.segments} things + 2 stuff each; "
          f"AdamW + full-model clipping", flush=True)
    print_contention_note(device)

    t_start = time.perf_counter()
    print(f"settings: AMP {' and '.join(args.amp)}; {args.warmup} warm-up + {args.iters} timed iterations each"
          + (", interleaved" if len(args.amp) > 1 else ""), flush=True)
    runners = run_settings(args, device)
    results = {}
    for amp, runner in runners.items():
        results[amp] = dict(runner.times(), last_loss=runner.last_loss)

    for amp, r in results.items():
        amp_desc = "off (float32)" if amp == "off" else (
            "on (autocast float16 + GradScaler)" if device.type == "cuda" else "on (autocast bfloat16, CPU)")
        rows = [[s, f"{r.get(s, 0.0):.3f}", f"{100 * r.get(s, 0.0) / r['total']:.0f}%"] for s in STAGES]
        rows.append(["total", f"{r['total']:.3f}", "100%"])
        print(f"\n== Training, AMP {amp_desc}: seconds per iteration, mean of {args.iters} after {args.warmup} warm-up ==")
        print(format_table(["stage", "s/iter", "share"], rows))
        print(f"iterations/s: {1.0 / r['total']:.3f}   images/s: {args.batch_size / r['total']:.2f}   "
              f"(last total loss {r['last_loss']:.4f})")
    if "on" in results and "off" in results:
        print(f"\nAMP speed-up (off/on time per iteration): {results['off']['total'] / results['on']['total']:.2f}x")
    print(f"\ndone in {time.perf_counter() - t_start:.0f} s"
          + (f" (load average now {os.getloadavg()[0]:.2f})" if hasattr(os, "getloadavg") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
