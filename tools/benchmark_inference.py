#!/usr/bin/env python
"""Inference benchmark: detr_d2's ``DetrPanoptic`` against the official DETR panoptic model.

Both networks carry the *same* random weights: the reference re-implementation of the official
``DETRsegm`` (``tests.utils.official_detr``, official parameter names, frozen BN with random statistics) is
built first, its state dict is converted with ``detr_d2.checkpoint.convert_official_detr`` (all 251
class logits kept: ``MODEL.DETR.CLASS_SLOTS dataset_id``) and loaded strictly into ours, and the raw
outputs of the two are checked to agree.

Printed, for each batch size (all images ``--input-size``, the standard test size 800x1199 = short
side 800, outputs at ``--output-size`` as in COCO evaluation):

* ms per image split into preprocess / backbone / transformer (input projection, positional
  encoding, encoder-decoder, class and box heads) / mask head (bbox attention + FPN mask head) /
  postprocess / other (glue between the stages), the total, images/s, and the ratio ours/official;
  ours is the real ``model(batched_inputs)`` call, split with forward hooks on its submodules;
  the official pipeline is normalisation + ``nested_tensor_from_tensor_list`` + ``DETRsegm`` +
  ``PostProcessPanoptic`` (PIL round trip); the timed passes of the two alternate (ABBA...) so both
  see the same machine load;
* FLOPs of the network forward per stage (``--flops torch``: ``torch.utils.flop_counter`` during the
  first warm-up pass, convolutions and matrix products, 2 FLOPs per multiply-add; ``--flops fvcore``:
  ``fvcore.nn.FlopCountAnalysis``, 1 per multiply-add, frozen BN not counted, one extra traced
  forward per model) and the peak memory it allocates;
* post-processing alone on the same raw outputs (ours ``DetrPanoptic.postprocess`` vs the official
  ``PostProcessPanoptic``): the random model's own outputs, its masks with ~20 confidently kept
  queries, and synthetic blob masks with ~20 kept queries; with the pixel agreement of the two results.

Example (the figures in the README)::

    python tools/benchmark_inference.py --device cpu --threads 2 --batch-sizes 1 4
"""
import argparse
import contextlib
import os
import sys
import time
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

from benchmark_utils import hw_size  # also puts the checkout on sys.path for the test oracle

STAGES = ("preprocess", "backbone", "transformer", "mask head", "postprocess", "other")
NETWORK_STAGES = ("backbone", "transformer", "mask head")
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
NUM_OFFICIAL_SLOTS = 250  # official classifier: 250 dataset-id slots + no-object


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: leave torch's default)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                   help="batch sizes to time (default: 1 4 on CUDA, 1 on CPU to keep the run short)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed passes per batch size and model (default 1); the first one also counts "
                        "FLOPs and peak memory, so it must be >= 1 unless --flops off")
    p.add_argument("--iters", type=int, default=1, help="timed passes per batch size and model (default 1)")
    p.add_argument("--input-size", type=hw_size(), default=(800, 1199),
                   help="network input HxW (default 800x1199: a 427x640 COCO image resized to short side 800)")
    p.add_argument("--output-size", type=hw_size(), default=(427, 640),
                   help="panoptic output HxW (the original image size, default 427x640)")
    p.add_argument("--depth", type=int, default=50, choices=(18, 34, 50, 101), help="ResNet depth (default 50)")
    p.add_argument("--hidden-dim", type=int, default=256)
    p.add_argument("--nheads", type=int, default=8)
    p.add_argument("--enc-layers", type=int, default=6)
    p.add_argument("--dec-layers", type=int, default=6)
    p.add_argument("--dim-feedforward", type=int, default=2048)
    p.add_argument("--num-queries", type=int, default=100)
    p.add_argument("--flops", choices=("torch", "fvcore", "off"), default="torch",
                   help="FLOP counter (default torch: counted during the first warm-up pass, no extra forward)")
    p.add_argument("--pp-iters", type=int, default=5, help="timed repetitions of each post-processing case (default 5)")
    p.add_argument("--pp-kept", type=int, default=20, help="kept queries in the synthetic post-processing cases")
    p.add_argument("--threshold", type=float, default=0.85, help="object score threshold of both post-processors")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.batch_sizes is None:
        args.batch_sizes = [1, 4] if args.device.startswith("cuda") else [1]
    if any(b < 1 for b in args.batch_sizes):
        p.error(f"--batch-sizes must be >= 1, got {args.batch_sizes}")
    if args.iters < 1 or args.warmup < 0 or args.pp_iters < 1:
        p.error("--iters and --pp-iters must be >= 1 and --warmup >= 0")
    if args.flops != "off" and args.warmup < 1:
        p.error("--flops counts FLOPs in the first warm-up pass: use --warmup >= 1 or --flops off")
    if not 0 <= args.pp_kept <= args.num_queries:
        p.error(f"--pp-kept must be in 0..--num-queries ({args.num_queries}), got {args.pp_kept}")
    return args


# ---------------------------------------------------------------------------------------------- models
def build_models(args: argparse.Namespace, device):
    """The official reference model (random init, non-trivial frozen-BN statistics) and ours with its
    converted weights, both in eval mode on ``device``."""
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import detr_d2
    from detr_d2.checkpoint import convert_official_detr
    from tests.utils.official_detr import build_official_detr, randomize_frozen_batchnorm_

    torch.manual_seed(args.seed)
    ref = build_official_detr(
        depth=args.depth, hidden_dim=args.hidden_dim, nheads=args.nheads, enc_layers=args.enc_layers,
        dec_layers=args.dec_layers, dim_feedforward=args.dim_feedforward, num_queries=args.num_queries,
        num_classes=NUM_OFFICIAL_SLOTS,
    )
    randomize_frozen_batchnorm_(ref, torch.Generator().manual_seed(args.seed))
    ref.eval().to(device)

    cfg = get_cfg()
    detr_d2.add_detr_config(cfg)
    cfg.merge_from_file(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "Base-DETR.yaml"))
    cfg.MODEL.DEVICE = str(device)
    cfg.MODEL.RESNETS.DEPTH = args.depth
    if args.depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    d = cfg.MODEL.DETR
    d.HIDDEN_DIM, d.NHEADS, d.DIM_FEEDFORWARD = args.hidden_dim, args.nheads, args.dim_feedforward
    d.ENC_LAYERS, d.DEC_LAYERS, d.NUM_OBJECT_QUERIES = args.enc_layers, args.dec_layers, args.num_queries
    # logit index = COCO category id, exactly the official 251-way classifier (same scores)
    d.CLASS_SLOTS, d.NUM_CLASSES = "dataset_id", NUM_OFFICIAL_SLOTS
    d.TEST.OBJECT_MASK_THRESHOLD = args.threshold
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ("coco_2017_val_panoptic",)  # metadata only (thing/stuff, ids); no files read
    ours = build_model(cfg)
    incompatible = ours.load_state_dict(convert_official_detr(ref.state_dict(), source="reference model"), strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys, incompatible
    ours.eval()
    return ours, ref


def stage_modules_ours(model) -> Dict[str, list]:
    return {
        "backbone": [model.backbone],
        "transformer": [model.position_encoding, model.input_proj, model.transformer, model.class_embed, model.bbox_embed],
        "mask head": [model.bbox_attention, model.mask_head],
    }


def stage_modules_official(model) -> Dict[str, list]:
    detr = model.detr
    return {
        "backbone": [detr.backbone[0]],
        "transformer": [detr.backbone[1], detr.input_proj, detr.transformer, detr.class_embed, detr.bbox_embed],
        "mask head": [model.bbox_attention, model.mask_head],
    }


class OursPipeline:
    """``model(batched_inputs)`` exactly as Detectron2 calls it; stages timed by hooks/method wrappers."""

    name = "ours"

    def __init__(self, model):
        self.model = model

    def instrument(self, timer) -> None:
        timer.hook_modules(stage_modules_ours(self.model))
        timer.wrap_method(self.model, "preprocess_image", "preprocess")
        timer.wrap_method(self.model, "postprocess", "postprocess")

    def network_method(self) -> Tuple[object, str]:
        return self.model, "forward_network"

    def __call__(self, batched_inputs: List[Dict]):
        return self.model(batched_inputs)


class OfficialPipeline:
    """The official evaluation path: normalise (RGB, ImageNet mean/std on [0, 1] pixels), pad into a
    ``NestedTensor``, ``DETRsegm``, then ``PostProcessPanoptic`` with processed = input size and
    target = output size (one PNG per image)."""

    name = "official"

    def __init__(self, model, postprocessor, device):
        import torch

        self.model = model
        self.postprocessor = postprocessor
        self.device = device
        self.mean = torch.tensor(IMAGENET_MEAN_RGB, device=device).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD_RGB, device=device).view(3, 1, 1)
        self._timer = None

    def instrument(self, timer) -> None:
        timer.hook_modules(stage_modules_official(self.model))
        self._timer = timer

    def network_method(self) -> Tuple[object, str]:
        return self, "network"

    def network(self, samples):
        return self.model(samples)

    def __call__(self, batched_inputs: List[Dict]):
        from tests.utils.official_detr import nested_tensor_from_tensor_list

        stage = self._timer.stage if self._timer is not None else (lambda _: contextlib.nullcontext())
        with stage("preprocess"):
            samples = nested_tensor_from_tensor_list(
                [(x["image"].to(self.device).float() / 255.0 - self.mean) / self.std for x in batched_inputs]
            )
        outputs = self.network(samples)
        with stage("postprocess"):
            processed = [tuple(x["image"].shape[-2:]) for x in batched_inputs]
            targets = [(x["height"], x["width"]) for x in batched_inputs]
            return self.postprocessor(outputs, processed, targets)


def make_batch(batch: int, input_size: Tuple[int, int], output_size: Tuple[int, int], seed: int) -> List[Dict]:
    """``batch`` random RGB uint8 images of ``input_size`` (same size: no padding), Detectron2 dicts."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.randint(0, 256, (3, *input_size), dtype=torch.uint8, generator=g),
         "height": output_size[0], "width": output_size[1]}
        for _ in range(batch)
    ]


# ---------------------------------------------------------------------------------------------- timing
class PipelineRunner:
    """Runs one pipeline on one batch with its stages instrumented (``with`` block), pass by pass, so the
    timed passes of the two pipelines can be interleaved (they then share the machine's load drift).

    ``run_pass(measure=True)`` (an untimed pass) also counts the network's FLOPs per stage (``--flops
    torch``) and its peak memory; ``run_pass(record=True)`` keeps the stage times. Afterwards: ``times()``
    (mean seconds per stage over the recorded passes), ``flops``, ``peak_bytes``, ``outputs`` (raw network
    outputs of the last pass)."""

    def __init__(self, pipeline, batch: List[Dict], device, flop_counter: str):
        self.pipeline, self.batch, self.device, self.flop_counter = pipeline, batch, device, flop_counter
        self.flops: Optional[Dict[str, float]] = None
        self.peak_bytes: Optional[int] = None
        self.outputs: Optional[Dict] = None

    def __enter__(self) -> "PipelineRunner":
        from benchmark_utils import StageTimer, patch_method

        self.timer = StageTimer(self.device)
        self.pipeline.instrument(self.timer)
        net_obj, net_attr = self.pipeline.network_method()
        self._capture = patch_method(net_obj, net_attr, on_return=self._keep_outputs)
        return self

    def _keep_outputs(self, outputs: Dict) -> None:
        self.outputs = outputs

    def __exit__(self, *exc) -> None:
        self._capture.remove()
        self.timer.remove()

    def run_pass(self, record: bool = False, measure: bool = False) -> None:
        from benchmark_utils import PeakMemory, patch_method

        measuring = None
        if measure:  # around the network call only: its peak memory and FLOPs per stage
            mem = PeakMemory(self.device)
            flop_meter = _TorchFlopStages(self.pipeline) if self.flop_counter == "torch" else contextlib.nullcontext()
            measuring = patch_method(*self.pipeline.network_method(), lambda: _both(mem, flop_meter))
        try:
            self.timer.start_iteration()
            self.pipeline(self.batch)
            self.timer.end_iteration(record=record)
        finally:
            if measuring is not None:
                measuring.remove()
        if measure:
            self.peak_bytes = mem.peak_bytes
            if self.flop_counter == "torch":
                self.flops = flop_meter.result

    def times(self) -> Dict[str, float]:
        from benchmark_utils import summarize_iterations

        return summarize_iterations(self.timer.history)


def benchmark_batch(pipelines: Sequence, batch: List[Dict], args, device, desc: str) -> List[PipelineRunner]:
    """Warm-up passes of each pipeline (the first one measuring), then ``--iters`` rounds of one timed pass
    per pipeline, alternating the order (ABBA...) so that load changes hit both alike."""
    from tqdm import tqdm

    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(PipelineRunner(p, batch, device, args.flops)) for p in pipelines]
        plan = [(r, False, w == 0 and args.flops != "off") for w in range(args.warmup) for r in runners]
        for i in range(args.iters):
            plan += [(r, True, False) for r in (runners if i % 2 == 0 else runners[::-1])]
        for runner, record, measure in tqdm(plan, desc=desc, unit="pass", leave=False, file=sys.stderr):
            runner.run_pass(record=record, measure=measure)
    return runners


@contextlib.contextmanager
def _both(first, second):
    with first, second:
        yield


class _TorchFlopStages:
    """``torch.utils.flop_counter.FlopCounterMode`` over one network call, attributed to stages with the
    same hooks as the timer (a :class:`StageTimer` whose clock is the running FLOP total); ``result`` has
    the stages, ``other`` (glue between them) and ``total``."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.result: Optional[Dict[str, float]] = None

    def __enter__(self):
        from torch.utils.flop_counter import FlopCounterMode

        from benchmark_utils import StageTimer

        self._counter = FlopCounterMode(display=False)
        self._meter = StageTimer("cpu", clock=lambda: float(self._counter.get_total_flops()))
        modules = (stage_modules_ours if isinstance(self.pipeline, OursPipeline) else stage_modules_official)(self.pipeline.model)
        self._meter.hook_modules(modules)
        self._counter.__enter__()
        self._meter.start_iteration()
        return self

    def __exit__(self, *exc):
        self.result = self._meter.end_iteration(record=False)
        self._counter.__exit__(*exc)
        self._meter.remove()


def fvcore_stage_flops(pipeline, batch: List[Dict], device) -> Tuple[Dict[str, float], Dict[str, int]]:
    """fvcore ``FlopCountAnalysis`` of the network forward only (traced), per stage; plus fvcore's
    unsupported-operator counts (operators it does not count, e.g. elementwise ops). Frozen batch norm
    is not counted for either model (see below)."""
    import torch
    from fvcore.nn import FlopCountAnalysis
    from torch import nn

    from tests.utils.official_detr import NestedTensor

    is_ours = isinstance(pipeline, OursPipeline)

    class Network(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images, mask):
            if is_ours:
                out = self.model.forward_network(images, mask)
            else:
                out = self.model(NestedTensor(images, mask))
            return out["pred_logits"], out["pred_boxes"], out["pred_masks"]

    if is_ours:
        images, mask = pipeline.model.preprocess_image(batch)
        inputs = (images.tensor, mask)
    else:
        mean = torch.tensor(IMAGENET_MEAN_RGB, device=device).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD_RGB, device=device).view(3, 1, 1)
        from tests.utils.official_detr import nested_tensor_from_tensor_list

        nt = nested_tensor_from_tensor_list([(x["image"].to(device).float() / 255 - mean) / std for x in batch])
        inputs = (nt.tensors, nt.mask)
    wrapper = Network(pipeline.model).eval()
    analysis = FlopCountAnalysis(wrapper, inputs).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    # Detectron2's FrozenBatchNorm2d runs aten::batch_norm (counted by fvcore), the official FrozenBN the
    # same scale-and-shift as plain mul/add (not counted): count neither, to compare like with like.
    # (A None handle would not replace fvcore's default batch-norm handle, hence the empty counter.)
    analysis.set_op_handle("aten::batch_norm", lambda inputs, outputs: Counter())
    by_module = analysis.by_module()
    names = {id(m): n for n, m in wrapper.named_modules()}
    modules = (stage_modules_ours if is_ours else stage_modules_official)(pipeline.model)
    stages = {s: float(sum(by_module.get(names[id(m)], 0) for m in ms)) for s, ms in modules.items()}
    stages["total"] = float(analysis.total())
    stages["other"] = stages["total"] - sum(stages[s] for s in modules)
    return stages, dict(analysis.unsupported_ops())


# ---------------------------------------------------------------------------------------------- post-processing
def synthetic_outputs(
    num_queries: int, num_kept: int, mask_hw: Tuple[int, int], thing_ids: Sequence[int], stuff_ids: Sequence[int],
    seed: int, masks=None,
) -> Dict:
    """Raw outputs of one image shaped like a trained DETR's: ``num_kept`` queries with a confident
    (p ~ 0.98) real class, the rest "no object". About a quarter of the kept queries are stuff, with one
    stuff class predicted twice (merged by both post-processors), and one kept thing query is never the
    strongest mask (area 0: dropped, which makes both recompute once). Masks: ``masks`` (Q, Hm, Wm) if
    given, else elliptic blobs (things) and horizontal bands (stuff) of logits ~ +-6 with noise.
    Returns ``pred_logits`` (1, Q, 251), ``pred_masks`` (1, Q, Hm, Wm), ``pred_boxes`` (1, Q, 4)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    q, (hm, wm) = num_queries, mask_hw
    logits = torch.randn((q, NUM_OFFICIAL_SLOTS + 1), generator=g)
    logits[:, NUM_OFFICIAL_SLOTS] += 10.0  # no object
    kept = torch.randperm(q, generator=g)[:num_kept].tolist()
    n_stuff = num_kept // 4 if num_kept >= 4 else 0
    stuff_choice = [stuff_ids[int(i)] for i in torch.randperm(len(stuff_ids), generator=g)[: max(n_stuff - 1, 0)]]
    if n_stuff >= 2:
        stuff_choice.append(stuff_choice[0])  # a stuff class predicted twice
    thing_choice = [thing_ids[int(i) % len(thing_ids)] for i in torch.randperm(len(thing_ids), generator=g)[: num_kept - len(stuff_choice)]]
    classes = thing_choice + stuff_choice
    y = torch.linspace(0, 1, hm).view(hm, 1)
    x = torch.linspace(0, 1, wm).view(1, wm)
    synth = -6.0 + torch.randn((q, hm, wm), generator=g)
    for j, (qi, c) in enumerate(zip(kept, classes)):
        logits[qi, NUM_OFFICIAL_SLOTS] -= 10.0
        logits[qi, c] += 10.0
        r = torch.rand(4, generator=g)
        if c in stuff_ids:
            y0 = float(r[0]) * 0.7
            inside = (y >= y0) & (y <= y0 + 0.3 + 0.3 * float(r[1]))
            synth[qi] = torch.where(inside.expand(hm, wm), 3.0, -3.0) + 0.5 * torch.randn((hm, wm), generator=g)
        elif j == 0 and num_kept > 1:
            synth[qi] = -12.0  # never wins a pixel
        else:
            cy, cx, ry, rx = float(r[0]), float(r[1]), 0.05 + 0.25 * float(r[2]), 0.05 + 0.25 * float(r[3])
            synth[qi] = 6.0 * (1 - ((y - cy) / ry) ** 2 - ((x - cx) / rx) ** 2).clamp(min=-1.0) + 0.5 * torch.randn((hm, wm), generator=g)
    out_masks = synth if masks is None else masks.clone()
    return {"pred_logits": logits[None], "pred_masks": out_masks[None], "pred_boxes": torch.rand((1, q, 4), generator=g)}


def compare_panoptic(ours_result: Tuple, official_result: Dict, slot_of_contiguous: Dict[int, int]) -> Tuple[float, bool]:
    """Pixel agreement of ours (ids 1..N, 0 = void) and the official PNG (ids 0..N-1, no void), and
    whether both list the same categories (dataset ids) in the same order."""
    import numpy as np

    from tests.utils.official_detr import decode_panoptic_png

    ids, info = ours_result
    ref_ids = decode_panoptic_png(official_result["png_string"])
    ref_info = official_result["segments_info"]
    ours_cats = [slot_of_contiguous[s["category_id"]] for s in info]
    ref_cats = [s["category_id"] for s in ref_info]
    if not info and not ref_info:
        return 1.0, True
    ours_zero_based = ids.cpu().numpy().astype(np.int64) - 1
    return float((ours_zero_based == ref_ids).mean()), ours_cats == ref_cats


def time_postprocessing(model, postprocessor, outputs: Dict, input_size, output_size, iters: int, device) -> Dict:
    """Mean seconds per image of ours and the official post-processor on the same raw outputs (one image),
    after one untimed call each; plus kept/segment counts and the agreement of the two results."""
    import torch

    from benchmark_utils import synchronize

    outputs = {k: v[:1].to(device) for k, v in outputs.items() if k in ("pred_logits", "pred_masks", "pred_boxes")}
    inputs = [{"height": output_size[0], "width": output_size[1]}]

    def ours():
        return model.postprocess(outputs, inputs, [tuple(input_size)])[0]["panoptic_seg"]

    def official():
        return postprocessor(outputs, [tuple(input_size)], [tuple(output_size)])[0]

    times = {}
    results = {}
    for name, fn in (("ours", ours), ("official", official)):
        results[name] = fn()
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        synchronize(device)
        times[name] = (time.perf_counter() - t0) / iters
    scores, labels = outputs["pred_logits"][0].float().softmax(-1).max(-1)
    kept = int(((labels != outputs["pred_logits"].shape[-1] - 1) & (scores > postprocessor.threshold)).sum())
    slot_of = {int(c): s for s, c in enumerate(model.label_map.tolist()) if c >= 0}
    agreement, same_segments = compare_panoptic(results["ours"], results["official"], slot_of)
    return {
        "kept": kept,
        "segments": (len(results["ours"][1]), len(results["official"]["segments_info"])),
        "agreement": agreement,
        "same_segments": same_segments,
        "ours": times["ours"],
        "official": times["official"],
    }


# ---------------------------------------------------------------------------------------------- report
def _ms(v: float) -> str:
    return f"{v * 1e3:.1f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "n/a"


def print_inference_table(batch: int, args, ours: Dict[str, float], official: Dict[str, float]) -> None:
    from benchmark_utils import format_table

    rows = [[s, _ms(ours.get(s, 0.0) / batch), _ms(official.get(s, 0.0) / batch), _ratio(ours.get(s, 0.0), official.get(s, 0.0))]
            for s in STAGES]
    rows.append(["total", _ms(ours["total"] / batch), _ms(official["total"] / batch), _ratio(ours["total"], official["total"])])
    ips_o, ips_r = batch / ours["total"], batch / official["total"]
    rows.append(["images/s", f"{ips_o:.3f}", f"{ips_r:.3f}", _ratio(ips_o, ips_r)])
    print(f"\n== Inference, batch {batch}: input {args.input_size[0]}x{args.input_size[1]}, output "
          f"{args.output_size[0]}x{args.output_size[1]}; ms per image, mean of {args.iters} timed pass(es) "
          f"per pipeline (interleaved) after {args.warmup} warm-up ==")
    print(format_table(["stage", "ours ms/img", "official ms/img", "ours/official"], rows))


def print_flops_table(batch: int, counter: str, ours: Dict[str, float], official: Dict[str, float],
                      peaks: Tuple[Optional[int], Optional[int]]) -> bool:
    from benchmark_utils import format_table

    unit = "GFLOPs (torch: 2 per multiply-add)" if counter == "torch" else "GFLOPs (fvcore: 1 per multiply-add)"
    rows = []
    for s in NETWORK_STAGES + ("other", "total"):
        a, b = ours.get(s, 0.0), official.get(s, 0.0)
        rows.append([s, f"{a / batch / 1e9:.2f}", f"{b / batch / 1e9:.2f}", _ratio(a, b)])
    if peaks[0] is not None and peaks[1] is not None:
        rows.append(["peak MiB (network)", f"{peaks[0] / 2**20:.0f}", f"{peaks[1] / 2**20:.0f}", _ratio(peaks[0], peaks[1])])
    print(f"\n== FLOPs per image and peak memory of the network forward, batch {batch}: {unit} ==")
    print(format_table(["part", "ours", "official", "ours/official"], rows))
    ok = ours["total"] <= official["total"]
    print(f"network FLOPs ours <= official: {'yes' if ok else 'NO'} ({ours['total'] / batch / 1e9:.3f} vs "
          f"{official['total'] / batch / 1e9:.3f} GFLOPs/image)")
    return ok


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    from tests.utils.official_detr import PostProcessPanoptic, official_is_thing_map
    from benchmark_utils import format_table, print_contention_note, setup_benchmark_device

    device = setup_benchmark_device(args.device, args.threads)
    if device is None:
        return 2
    print(f"model: ResNet-{args.depth}, hidden {args.hidden_dim}, {args.enc_layers}+{args.dec_layers} layers, "
          f"{args.num_queries} queries, 251 class logits (250 dataset-id slots + no-object); random weights", flush=True)
    print_contention_note(device)

    t_start = time.perf_counter()
    ours_model, ref_model = build_models(args, device)
    postprocessor = PostProcessPanoptic(official_is_thing_map(NUM_OFFICIAL_SLOTS), threshold=args.threshold)
    pipelines = [OursPipeline(ours_model), OfficialPipeline(ref_model, postprocessor, device)]

    flops_ok = True
    captured: Dict[str, Dict] = {}
    with torch.no_grad():
        for bi, batch_size in enumerate(args.batch_sizes):
            batch = make_batch(batch_size, args.input_size, args.output_size, args.seed + bi)
            print(f"[{time.perf_counter() - t_start:6.0f} s] batch {batch_size}: {args.warmup} warm-up + "
                  f"{args.iters} timed pass(es) of each pipeline, interleaved", flush=True)
            ours_run, ref_run = benchmark_batch(pipelines, batch, args, device, f"batch {batch_size}")
            t_o, f_o, m_o, out_o = ours_run.times(), ours_run.flops, ours_run.peak_bytes, ours_run.outputs
            t_r, f_r, m_r, out_r = ref_run.times(), ref_run.flops, ref_run.peak_bytes, ref_run.outputs
            if args.flops == "fvcore":
                f_o, f_r = (fvcore_stage_flops(p, batch, device) for p in pipelines)
            if bi == 0:
                dl = (out_o["pred_logits"] - out_r["pred_logits"]).abs().max().item()
                dm = (out_o["pred_masks"] - out_r["pred_masks"]).abs().max().item()
                print(f"same weights check: max |ours - official| = {dl:.2e} on class logits, {dm:.2e} on mask logits "
                      f"(mask logits up to {out_r['pred_masks'].abs().max().item():.2f})")
                captured = out_o
                ours_rest_per_image = (t_o["total"] - t_o.get("postprocess", 0.0)) / batch_size
            print_inference_table(batch_size, args, t_o, t_r)
            if args.flops != "off":
                if args.flops == "fvcore":
                    (f_o, uns_o), (f_r, uns_r) = f_o, f_r
                flops_ok &= print_flops_table(batch_size, args.flops, f_o, f_r, (m_o, m_r))
                if args.flops == "fvcore":
                    print(f"fvcore did not count (same for both when equal): ours {uns_o}; official {uns_r}")

        # ------------------------------------------------------------------ post-processing
        print(f"\n[{time.perf_counter() - t_start:6.0f} s] post-processing benchmark", flush=True)
        from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

        thing_ids = [c["id"] for c in COCO_CATEGORIES if c["isthing"]]
        stuff_ids = [c["id"] for c in COCO_CATEGORIES if not c["isthing"]]
        mask_hw = tuple(captured["pred_masks"].shape[-2:])
        model_masks = captured["pred_masks"][0].float().cpu()
        cases = [
            ("random model outputs", {k: v for k, v in captured.items() if k != "aux_outputs"}),
            (f"random-model masks, {args.pp_kept} kept",
             synthetic_outputs(args.num_queries, args.pp_kept, mask_hw, thing_ids, stuff_ids, args.seed, masks=model_masks)),
            (f"synthetic blob masks, {args.pp_kept} kept",
             synthetic_outputs(args.num_queries, args.pp_kept, mask_hw, thing_ids, stuff_ids, args.seed)),
        ]
        rows, pp_ok = [], True
        for name, outputs in cases:
            r = time_postprocessing(ours_model, postprocessor, outputs, args.input_size, args.output_size, args.pp_iters, device)
            speedup = r["official"] / r["ours"]
            pp_ok &= speedup >= 5.0
            share = 100 * r["ours"] / (r["ours"] + ours_rest_per_image)
            rows.append([name, r["kept"], f"{r['segments'][0]}/{r['segments'][1]}",
                         f"{100 * r['agreement']:.2f}%{'' if r['same_segments'] else ' (segments differ)'}",
                         _ms(r["ours"]), _ms(r["official"]), f"{speedup:.1f}x", f"{share:.1f}%"])
        print(f"\n== Post-processing of one image on the same raw outputs: processed {args.input_size[0]}x"
              f"{args.input_size[1]} -> output {args.output_size[0]}x{args.output_size[1]}, threshold "
              f"{args.threshold}, mean of {args.pp_iters} ==")
        print(format_table(["case", "kept", "segments ours/official", "pixel agreement", "ours ms", "official ms",
                            "official/ours", "ours share"], rows))
        print("(ours share: ours post-processing / (it + the rest of one ours inference at batch "
              f"{args.batch_sizes[0]}, {_ms(ours_rest_per_image)} ms/image))")
        print(f"post-processing speed-up >= 5x in every case: {'yes' if pp_ok else 'NO'}")
    if args.flops != "off":
        print(f"summary: network FLOPs ours <= official at every batch size: {'yes' if flops_ok else 'NO'}; "
              f"post-processing >= 5x faster in every case: {'yes' if pp_ok else 'NO'}")
    print(f"\ndone in {time.perf_counter() - t_start:.0f} s"
          + (f" (load average now {os.getloadavg()[0]:.2f})" if hasattr(os, "getloadavg") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
