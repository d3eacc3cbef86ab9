#!/usr/bin/env python
"""Training benchmark: one training step of detr_d2's ``DetrPanoptic`` against the official DETR
code, same weights, same targets, same run; then the quickstart's joint step with and without
all-query masks.

Part ``stage2`` (the official two-stage recipe's mask-head training, ``--frozen_weights``): the
detector (ResNet, transformer, class and box heads) is frozen and only ``bbox_attention`` /
``mask_head`` train.

* ours: ``MODEL.DETR.FROZEN_WEIGHTS`` (the detector loaded from a checkpoint file and frozen),
  ``DEEP_SUPERVISION False``; a step is Detectron2's ``SimpleTrainer.run_step`` without the data
  loader (``loss_dict = model(batch)``, sum, ``zero_grad``, ``backward``, ``step``) with
  ``tools/train_net.py``'s optimiser (``build_detr_optimizer``: AdamW over the trainable parameters,
  full-model gradient clipping 0.1). The criterion matches first and runs the mask head on the
  matched queries only.
* official: ``DETRsegm`` of the test oracle with the detector's parameters frozen (``freeze_detr``;
  nothing in the detector requires grad, so autograd records nothing there, as under
  ``torch.no_grad``), auxiliary decoding outputs on (the official default), the official
  ``SetCriterion`` (``tests/utils/official_detr/ criterion.py``: Hungarian matching on class/L1/GIoU
  costs, cross-entropy with no-object weight 0.1, L1 + GIoU, sigmoid focal + dice on the matched
  queries' masks taken from the masks of *all* queries) and ``engine.train_one_epoch``'s step:
  ``AdamW`` (``main.py``'s parameter groups, lr 1e-4, weight decay 1e-4), ``clip_grad_norm_(0.1)``.

Both get the same random weights (the oracle's, converted with
``detr_d2.checkpoint.convert_official_detr`` and loaded strictly), 251 class logits (``CLASS_SLOTS
dataset_id``), dropout 0 (the official stage 2 keeps the frozen transformer's dropout 0.1 active;
without it both sides compute the same thing, at the same cost), and the same batch:
``--batch-size`` random RGB images of ``--image-size`` (default 2 x 512x640) with random panoptic
targets (two stuff bands + ``--segments`` thing rectangles/ellipses painted over them: about 8
segments per image, COCO classes). The first step's mask losses of the two must agree (same weights,
same matching); printed with their relative difference.

Part ``quickstart``: ``configs/quickstart/detr_r18_quickstart.yaml`` (ResNet-18, joint box + mask
training), one batch of ``SOLVER.IMS_PER_BATCH`` (8) images made by the quickstart generator
(``generate_quickstart_ dataset`` in a temporary folder, mapped by the training mapper), before =
``MODEL.DETR.ALL_QUERY_MASKS True`` (every query's mask, as official DETR; with
``--quickstart-before pre-issue-25``: the computation before issue 25's speed changes,
``tests.utils.speed_oracles``), after = the default (matched queries only), both from the same seed.

Printed per part: seconds per iteration split into forward (normalisation, padding, detector), mask
head (its forward: ``bbox_attention`` + ``mask_head``; ours
``DetrPanoptic.batch_grid_query_masks``), loss (targets, matching, losses), backward, optimizer
(``zero_grad`` + clipping + ``step``) and other (means over the timed steps), the total's mean and
median (robust to load spikes on a shared machine; the speed-ups use it), iterations/s; the peak
memory of one whole step (one extra untimed step after the warm-up: on CUDA
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, on CPU the peak of tensor
memory from the profiler's allocation events, both above what is allocated before the step: weights,
optimiser state and the batch are not counted); the ratios; and the targets (stage 2: >= 3x faster,
>= 4x less step memory). Timed steps of the two sides alternate (ABBA...) so both see the same
machine load.

``--amp``: both sides under ``torch.autocast("cuda", torch.float16)`` with a ``GradScaler`` (CUDA
only).

Example (the figures in the README)::

    python -m benchmarks.training --device cpu --threads 2
    python -m benchmarks.training --device cuda --warmup 3 --iters 10
"""

import argparse
import contextlib
import os
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from benchmarks.utils import (
    hw_size,
    print_done,
)

STAGES = ("forward", "mask head", "loss", "backward", "optimizer", "other")
MASK_LOSSES = ("loss_mask", "loss_dice")
TARGET_SPEEDUP = 3.0  # stage 2, ours vs official
TARGET_MEMORY = 4.0  # stage 2, official / ours peak step memory
LOSS_RTOL = 1e-4  # first-step mask losses, float32
BEFORE_CHOICES = ("all-query-masks", "pre-issue-25")
BEFORE_LABELS = {
    "all-query-masks": "MODEL.DETR.ALL_QUERY_MASKS True",
    "pre-issue-25": "the computation before issue 25 (unfolded BN, NCHW, weight-returning "
    "attention, interpolated mask loss)",
}
QUICKSTART_CONFIG = os.path.join("configs", "quickstart", "detr_r18_quickstart.yaml")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from benchmarks.utils import add_architecture_arguments, add_device_arguments

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_device_arguments(p)
    p.add_argument(
        "--amp", action="store_true", help="float16 autocast + GradScaler on both sides (CUDA only)"
    )
    p.add_argument(
        "--parts", nargs="+", choices=("stage2", "quickstart"), default=["stage2", "quickstart"]
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed steps per side before the memory step and the timed ones (default 1; >= 1: "
        "the "
        "first step's losses are compared and the optimiser state exists before memory is "
        "measured)",
    )
    p.add_argument("--iters", type=int, default=3, help="timed stage-2 steps per side (default 3)")
    p.add_argument("--batch-size", type=int, default=2, help="stage-2 images per step (default 2)")
    p.add_argument(
        "--image-size",
        type=hw_size(32),
        default=(512, 640),
        help="stage-2 image HxW (default 512x640)",
    )
    p.add_argument(
        "--segments",
        type=int,
        default=6,
        help="stage-2 thing segments per image, plus 2 stuff bands (default 6)",
    )
    add_architecture_arguments(p)
    p.add_argument(
        "--quickstart-iters",
        type=int,
        default=5,
        help="timed quickstart steps per setting (default 5)",
    )
    p.add_argument(
        "--quickstart-before",
        choices=BEFORE_CHOICES,
        default="all-query-masks",
        help="the quickstart's before side: all-query-masks (MODEL.DETR.ALL_QUERY_MASKS True) or "
        "pre-issue-25 (the computation before issue 25's speed changes: "
        "tests.utils.speed_oracles.old_computation)",
    )
    p.add_argument(
        "--quickstart-opts",
        nargs="*",
        default=[],
        help="KEY VALUE pairs applied to the quickstart config (Detectron2 opts, e.g. "
        "SOLVER.IMS_PER_BATCH 4)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if (
        args.iters < 1
        or args.quickstart_iters < 1
        or args.warmup < 1
        or args.batch_size < 1
        or args.segments < 0
    ):
        p.error(
            "--iters, --quickstart-iters, --warmup and --batch-size must be >= 1, --segments >= 0"
        )
    if len(args.quickstart_opts) % 2:
        p.error(f"--quickstart-opts takes KEY VALUE pairs, got {len(args.quickstart_opts)} values")
    if args.amp and not args.device.startswith("cuda"):
        p.error("--amp is float16 autocast on CUDA: use it with --device cuda")
    return args


# ----------------------------------------------------------------------------------------------
# data
def make_batch(args: argparse.Namespace, is_thing: Sequence[bool], device) -> List[Dict]:
    """Random images and panoptic targets: per image two stuff bands (top/bottom, random stuff
    classes) and ``--segments`` thing rectangles/ellipses painted in order (later ones occlude
    earlier ones); segments left with no pixel are dropped. Instances: ``gt_classes`` (contiguous),
    ``gt_masks`` (BitMasks), ``gt_boxes`` (XYXY pixels from the masks), ``gt_is_crowd`` (all
    False)."""
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
            ry, rx = (
                float(v) for v in (0.05 + 0.2 * torch.rand(2, generator=g)) * torch.tensor([h, w])
            )
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
        batch.append(
            {"image": image.to(device), "instances": inst.to(device), "height": h, "width": w}
        )
    return batch


def official_targets(batch: List[Dict], contiguous_to_slot) -> List[Dict]:
    """The official targets of the same segments: ``labels`` = class slots (COCO dataset ids),
    ``boxes`` normalised cxcywh of the image, ``masks`` (N, H, W) bool."""
    import torch
    from torchvision.ops import box_convert

    targets = []
    for x in batch:
        inst = x["instances"]
        h, w = inst.image_size
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=inst.gt_boxes.tensor.device)
        targets.append(
            {
                "labels": contiguous_to_slot.to(inst.gt_classes.device)[inst.gt_classes],
                "boxes": box_convert(inst.gt_boxes.tensor.float() / scale, "xyxy", "cxcywh"),
                "masks": inst.gt_masks.tensor,
            }
        )
    return targets


def quickstart_batch(cfg, root: str, seed: int) -> List[Dict]:
    """``SOLVER.IMS_PER_BATCH`` images of the quickstart generator (written under ``root``), mapped
    by the training mapper of ``cfg`` (random flip seeded by ``seed``)."""
    import numpy as np
    import torch

    from detr_d2.data.dataset_mappers import DetrPanopticDatasetMapper
    from tests.utils.quickstart_data import quickstart_dicts

    dicts = quickstart_dicts(cfg, root, cfg.SOLVER.IMS_PER_BATCH, seed)
    mapper = DetrPanopticDatasetMapper(cfg, True)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return [mapper(d) for d in dicts]


# ----------------------------------------------------------------------------------------------
# steps
class Side:
    """One side of a comparison: a model, its optimiser and batch, a step function and a stage
    timer. ``step(record)`` runs one training step (``record``: keep its stage times); ``losses``
    holds the first step's unweighted losses (floats); ``matched`` the number of queries whose mask
    the first step computed."""

    def __init__(self, name: str, device, amp: bool):
        import torch

        from benchmarks.utils import StageTimer

        self.name, self.device, self.amp = name, device, amp
        self.timer = StageTimer(device, nesting="inner")
        self.scaler = torch.cuda.amp.GradScaler() if amp else None
        self.losses: Optional[Dict[str, float]] = None
        self.peak_bytes: Optional[int] = None
        self.iteration = 0
        self._patches: list = []

    def autocast(self):
        import torch

        return torch.autocast("cuda", dtype=torch.float16) if self.amp else contextlib.nullcontext()

    def backward_and_step(
        self, losses, optimizer, clip: Optional[Callable[[], None]] = None
    ) -> None:
        """``zero_grad``, backward (scaled under AMP), optional clipping, ``step``: the stage split
        of both."""
        import torch

        if not torch.isfinite(losses):
            raise FloatingPointError(
                f"{self.name}: loss became {losses.item()} at iteration {self.iteration}"
            )
        with self.timer.stage("optimizer"):
            optimizer.zero_grad()
        with self.timer.stage("backward"):
            (self.scaler.scale(losses) if self.scaler is not None else losses).backward()
        with self.timer.stage("optimizer"):
            if self.scaler is not None:
                if clip is not None:
                    self.scaler.unscale_(optimizer)
                    clip()
                self.scaler.step(optimizer)
                self.scaler.update()
            else:
                if clip is not None:
                    clip()
                optimizer.step()

    def run_step(self) -> Dict[str, float]:
        raise NotImplementedError

    def step(self, record: bool = True, measure: bool = False) -> None:
        from benchmarks.utils import PeakMemory

        self.timer.start_iteration()
        with PeakMemory(self.device) if measure else contextlib.nullcontext() as mem:
            losses = self.run_step()
        self.timer.end_iteration(record=record)
        if measure:
            self.peak_bytes = mem.peak_bytes
        if self.losses is None:
            self.losses = losses
        self.iteration += 1

    def times(self) -> Dict[str, float]:
        """Mean seconds per stage over the recorded steps, and ``median`` (of the steps' totals)."""
        from benchmarks.utils import summarize_iterations

        return dict(
            summarize_iterations(self.timer.history),
            median=summarize_iterations(self.timer.history, "median")["total"],
        )

    def close(self) -> None:
        for p in reversed(self._patches):
            p.remove()
        self.timer.remove()


class OursSide(Side):
    """``DetrPanoptic`` trained as Detectron2's ``SimpleTrainer.run_step`` / ``AMPTrainer.run_step``
    do."""

    def __init__(self, name: str, model, optimizer, batch: List[Dict], device, amp: bool):
        from benchmarks.utils import patch_method

        super().__init__(name, device, amp)
        self.model, self.optimizer, self.batch = model, optimizer, batch
        t = self.timer
        t.wrap_method(model, "preprocess_image", "forward")
        t.wrap_method(model, "forward_detector", "forward")
        t.wrap_method(model, "prepare_targets", "loss")
        t.hook_modules({"loss": [model.criterion]})
        t.wrap_method(
            model, "batch_grid_query_masks", "mask head"
        )  # inside the criterion: matched queries (or all)
        self.matched: Optional[int] = None
        self._patches.append(patch_method(model, "batch_grid_query_masks", on_return=self._count))

    def _count(self, masks) -> None:
        if self.matched is None:
            self.matched = sum(len(m) for m in masks)

    def run_step(self) -> Dict[str, float]:
        with self.autocast():
            loss_dict = self.model(self.batch)
            losses = sum(loss_dict.values())
        self.backward_and_step(losses, self.optimizer)
        weights = self.model.criterion.weight_dict
        return {k: float(v.detach()) / weights[k] for k, v in loss_dict.items() if weights.get(k)}


class OfficialSide(Side):
    """``DETRsegm`` + the official ``SetCriterion`` trained as ``engine.train_one_epoch`` does."""

    def __init__(self, model, criterion, batch: List[Dict], targets: List[Dict], device, amp: bool):
        import torch

        from tests.utils.official_detr import nested_tensor_from_tensor_list

        super().__init__("official", device, amp)
        self.model, self.criterion, self.targets = model, criterion, targets
        mean = torch.tensor((0.485, 0.456, 0.406), device=device).view(3, 1, 1)
        std = torch.tensor((0.229, 0.224, 0.225), device=device).view(3, 1, 1)
        self.normalize = lambda: nested_tensor_from_tensor_list(
            [(x["image"].float() / 255.0 - mean) / std for x in batch]
        )
        # main.py: trainable non-backbone parameters at lr, backbone ones at lr_backbone (none here)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if "backbone" not in n]},
            {"params": [p for n, p in named if "backbone" in n], "lr": 1e-5},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=1e-4, weight_decay=1e-4)
        self.timer.hook_modules({"mask head": [model.bbox_attention, model.mask_head]})
        self.matched = model.detr.num_queries * len(batch)

    def run_step(self) -> Dict[str, float]:
        import torch

        t = self.timer
        with self.autocast():
            with t.stage("forward"):
                outputs = self.model(self.normalize())
            with t.stage("loss"):
                loss_dict = self.criterion(outputs, self.targets)
                weights = self.criterion.weight_dict
                losses = sum(loss_dict[k] * weights[k] for k in loss_dict.keys() if k in weights)
        self.backward_and_step(
            losses,
            self.optimizer,
            clip=lambda: torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.1),
        )
        return {k: float(v) for k, v in loss_dict.items() if k in weights}


def run_interleaved(sides: Sequence[Side], warmup: int, iters: int, desc: str) -> None:
    """``warmup`` untimed steps of each side, one untimed step measuring peak memory, then ``iters``
    rounds of one timed step per side, alternating the order (ABBA...)."""
    from tqdm import tqdm

    plan = [(s, False, False) for _ in range(warmup) for s in sides] + [
        (s, False, True) for s in sides
    ]
    for i in range(iters):
        plan += [(s, True, False) for s in (sides if i % 2 == 0 else sides[::-1])]
    for side, record, measure in tqdm(plan, desc=desc, unit="step", leave=False, file=sys.stderr):
        side.step(record=record, measure=measure)


# ----------------------------------------------------------------------------------------------
# parts
def build_stage2(
    args: argparse.Namespace, device, folder: str
) -> Tuple[OursSide, OfficialSide, int]:
    """Both sides of the stage-2 comparison, with the same weights and batch; also the number of
    segments."""
    import torch
    from detectron2.modeling import build_model

    from benchmarks.utils import (
        architecture,
        build_reference_model,
        converted_reference_weights,
        detr_config,
        load_reference_weights,
    )
    from detr_d2.engine.optimizer import build_detr_optimizer
    from tests.utils.official_detr.criterion import build_official_criterion

    arch = architecture(args)
    ref = build_reference_model(arch, args.seed, dropout=0.0)
    for p in ref.detr.parameters():  # DETRsegm(freeze_detr=True)
        p.requires_grad_(False)
    ref.detr.aux_loss = True  # main.py default (--aux_loss unless --no_aux_loss)
    ref.train().to(device)
    criterion = build_official_criterion(aux_loss=True, dec_layers=args.dec_layers).to(device)

    frozen = os.path.join(folder, "detector.pth")  # the detection checkpoint FROZEN_WEIGHTS reads
    torch.save({"model": converted_reference_weights(ref)}, frozen)
    cfg = detr_config(arch, device, dropout=0.0)
    cfg.MODEL.DETR.DEEP_SUPERVISION = False
    cfg.MODEL.DETR.FROZEN_WEIGHTS = frozen
    model = build_model(cfg)
    load_reference_weights(model, ref)  # the mask head too (FROZEN_WEIGHTS loads everything else)
    model.train()
    batch = make_batch(args, model.is_thing.tolist(), device)
    ours = OursSide("ours", model, build_detr_optimizer(cfg, model), batch, device, args.amp)
    official = OfficialSide(
        ref, criterion, batch, official_targets(batch, model.contiguous_to_slot), device, args.amp
    )
    return ours, official, sum(len(x["instances"]) for x in batch)


def build_quickstart(
    args: argparse.Namespace, device, folder: str
) -> Tuple[OursSide, OursSide, object]:
    """``before`` (ALL_QUERY_MASKS True) and ``after`` (default) quickstart models from the same
    seed, with the same optimiser settings and batch; also the config."""
    import torch
    from detectron2.modeling import build_model

    from benchmarks.utils import REPO_ROOT
    from detr_d2.config import get_detr_cfg
    from detr_d2.engine.optimizer import build_detr_optimizer

    cfg = get_detr_cfg(os.path.join(REPO_ROOT, QUICKSTART_CONFIG), args.quickstart_opts)
    cfg.MODEL.DEVICE = str(device)
    batch = quickstart_batch(cfg, os.path.join(folder, "quickstart"), args.seed)
    sides = []
    old = args.quickstart_before == "pre-issue-25"
    for name, all_query_masks in (("before", not old), ("after", False)):
        c = cfg.clone()
        c.MODEL.DETR.ALL_QUERY_MASKS = all_query_masks
        torch.manual_seed(args.seed)
        model = build_model(c)
        model.train()
        side = OursSide(name, model, build_detr_optimizer(c, model), batch, device, args.amp)
        if old and name == "before":
            side._patches.append(_OldComputation(model))
        sides.append(side)
    return sides[0], sides[1], cfg


class _OldComputation:
    """``tests.utils.speed_oracles.old_computation(model)`` entered until ``remove()``."""

    def __init__(self, model):
        from tests.utils.speed_oracles import old_computation

        self._switch = old_computation(model)
        self._switch.__enter__()

    def remove(self) -> None:
        self._switch.__exit__(None, None, None)


# ----------------------------------------------------------------------------------------------
# report
def _mib(v: Optional[int]) -> str:
    return "-" if v is None else f"{v / 2**20:.0f}"


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    return f"{a / b:.2f}" if a is not None and b else "n/a"


def print_step_table(title: str, a: Side, b: Side) -> Tuple[float, Optional[float]]:
    """Stage table of ``a`` (the reference: official / before) and ``b`` (ours / after); returns the
    speed-up (of the median step times) and the memory ratio a/b."""
    from benchmarks.utils import format_table

    ta, tb = a.times(), b.times()
    rows = [
        [
            s,
            f"{tb.get(s, 0.0):.3f}",
            f"{ta.get(s, 0.0):.3f}",
            _ratio(ta.get(s, 0.0), tb.get(s, 0.0)),
        ]
        for s in STAGES
    ]
    rows.append(
        ["total", f"{tb['total']:.3f}", f"{ta['total']:.3f}", _ratio(ta["total"], tb["total"])]
    )
    rows.append(
        [
            "total (median)",
            f"{tb['median']:.3f}",
            f"{ta['median']:.3f}",
            _ratio(ta["median"], tb["median"]),
        ]
    )
    rows.append(
        [
            "iterations/s (median)",
            f"{1 / tb['median']:.3f}",
            f"{1 / ta['median']:.3f}",
            _ratio(ta["median"], tb["median"]),
        ]
    )
    rows.append(
        [
            "peak step MiB",
            _mib(b.peak_bytes),
            _mib(a.peak_bytes),
            _ratio(a.peak_bytes, b.peak_bytes),
        ]
    )
    print(f"\n== {title} ==")
    print(format_table(["stage (s/iter)", b.name, a.name, f"{a.name}/{b.name}"], rows))
    memory = a.peak_bytes / b.peak_bytes if a.peak_bytes and b.peak_bytes else None
    return ta["median"] / tb["median"], memory


def print_losses(a: Side, b: Side, keys: Sequence[str], rtol: float) -> bool:
    """First-step losses of both sides; True when the mask losses agree within ``rtol``
    (relative)."""
    ok = True
    parts = []
    for k in keys:
        va, vb = a.losses.get(k), b.losses.get(k)
        if va is None or vb is None:
            continue
        rel = abs(va - vb) / max(abs(va), 1e-12)
        if k in MASK_LOSSES:
            ok &= rel <= rtol
        parts.append(f"{k} {b.name} {vb:.6f} {a.name} {va:.6f} (rel. diff {rel:.1e})")
    print("first-step losses: " + "; ".join(parts))
    print(f"first-step mask losses agree (rel. diff <= {rtol:g}): {'yes' if ok else 'NO'}")
    return ok


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    import torch
    from detectron2.utils.events import EventStorage

    from benchmarks.utils import print_contention_note, setup_benchmark_device

    device = setup_benchmark_device(args.device, args.threads)
    if device is None:
        return 2
    precision = "float16 autocast + GradScaler" if args.amp else "float32"
    print_contention_note(device)
    t_start = time.perf_counter()
    rtol = LOSS_RTOL if not args.amp else 1e-2
    verdicts: List[str] = []
    with tempfile.TemporaryDirectory(prefix="detr_d2_benchmark_") as folder, EventStorage(0):
        if "stage2" in args.parts:
            ours, official, num_segments = build_stage2(args, device, folder)
            h, w = args.image_size
            print(
                f"stage 2: ResNet-{args.depth} detector frozen (hidden {args.hidden_dim}, "
                f"{args.enc_layers}+"
                f"{args.dec_layers} layers, {args.num_queries} queries, 251 class logits), "
                "mask head trained; batch "
                f"{args.batch_size} x {h}x{w} random images, {num_segments} segments in all; "
                f"dropout 0; {precision}; "
                f"{args.warmup} warm-up + 1 memory + {args.iters} timed step(s) per side, "
                "interleaved",
                flush=True,
            )
            try:
                run_interleaved([official, ours], args.warmup, args.iters, "stage 2")
            finally:
                ours.close()
                official.close()
            speedup, memory = print_step_table(
                f"Stage-2 training step: seconds per iteration, mean of {args.iters} after "
                f"{args.warmup} warm-up; "
                f"speed-up = official/ours",
                official,
                ours,
            )
            print(
                f"mask head computed for {ours.matched} queries (the matched ones) by ours, "
                f"{official.matched} "
                f"(all) by the official code"
            )
            print_losses(official, ours, MASK_LOSSES + ("loss_ce", "loss_bbox", "loss_giou"), rtol)
            verdicts.append(
                _verdict(
                    f"stage 2: >= {TARGET_SPEEDUP:g}x faster than the official step",
                    speedup,
                    TARGET_SPEEDUP,
                )
            )
            verdicts.append(
                _verdict(
                    f"stage 2: >= {TARGET_MEMORY:g}x less peak step memory", memory, TARGET_MEMORY
                )
            )
            del ours, official
        if "quickstart" in args.parts:
            print(f"\n[{time.perf_counter() - t_start:6.0f} s] quickstart joint step", flush=True)
            before, after, cfg = build_quickstart(args, device, folder)
            size = cfg.INPUT.MAX_SIZE_TRAIN
            print(
                f"quickstart: {QUICKSTART_CONFIG} (ResNet-{cfg.MODEL.RESNETS.DEPTH}, "
                f"{cfg.MODEL.DETR.NUM_OBJECT_QUERIES} queries x "
                f"{cfg.MODEL.DETR.GROUP_DETR.NUM_QUERY_GROUPS} Group DETR "
                "group(s), duplicate suppression "
                f"{'on' if cfg.MODEL.DETR.DUPLICATE_SUPPRESSION.ENABLED else 'off'}, "
                f"joint training); batch {cfg.SOLVER.IMS_PER_BATCH} x "
                f"{size}x{size} from the quickstart generator, "
                f"{sum(len(x['instances']) for x in before.batch)} "
                f"segments in all; {precision}; {args.warmup} warm-up + 1 memory + "
                f"{args.quickstart_iters} timed "
                f"step(s) per setting, interleaved",
                flush=True,
            )
            try:
                run_interleaved([before, after], args.warmup, args.quickstart_iters, "quickstart")
            finally:
                before.close()
                after.close()
            speedup, memory = print_step_table(
                "Quickstart joint training step: seconds per iteration, mean of "
                f"{args.quickstart_iters} after "
                f"{args.warmup} warm-up; before = {BEFORE_LABELS[args.quickstart_before]}, "
                "after = default",
                before,
                after,
            )
            print(
                f"mask head computed for {after.matched} queries (the matched ones) after, "
                f"{before.matched} before"
            )
            print_losses(before, after, MASK_LOSSES + ("loss_ce", "loss_bbox", "loss_giou"), rtol)
            verdicts.append(
                f"quickstart: {speedup:.2f}x faster, {memory:.2f}x less peak step memory"
                if memory
                else f"quickstart: {speedup:.2f}x faster"
            )
    where = (
        f"{device.type}"
        + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")
        + f", {precision}"
    )
    print(f"\n== Summary ({where}) ==")
    for line in verdicts:
        print(line)
    print_done(t_start)
    return 0


def _verdict(label: str, value: Optional[float], target: float) -> str:
    if value is None:
        return f"{label}: not measured"
    state = "MET" if value >= target else f"NOT MET (short by {target / value:.2f}x)"
    return f"{label}: {value:.2f}x, {state}"


if __name__ == "__main__":
    sys.exit(main())
