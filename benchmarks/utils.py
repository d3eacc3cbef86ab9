"""Measurement helpers for the benchmarks (``benchmarks/*.py``).

* :class:`StageTimer` attributes wall time (or any other running counter, e.g. FLOPs) to named
  stages without changing the code it measures: forward pre/post hooks on submodules, temporary
  wrappers around bound methods (:func:`patch_method`), or explicit ``with timer.stage(name):``
  blocks. A stage entered while another runs counts in the outermost one (default) or, with
  ``nesting="inner"``, in itself. On CUDA every stage boundary synchronises the device, so times are
  wall-clock GPU times.
* :class:`PeakMemory`: peak tensor memory allocated inside a block (CUDA allocator stats, or the
  profiler's allocation events on CPU).
* :func:`summarize_iterations`, :func:`format_table`: per-stage means and plain-text tables.
* :func:`hw_size`: the ``HxW`` argument type of the benchmarks.
* Same-weight model pairs: :func:`build_reference_model` (the official ``DETRsegm`` of the test
  oracle, random weights), :func:`detr_config` (our config of the same architecture, 251 dataset-id
  class slots) and :func:`load_reference_weights` (the reference's weights converted and loaded
  strictly into ours); :func:`add_architecture_arguments` / :func:`architecture` for their
  command-line sizes.

Benchmarks run from the repository root (``python -m benchmarks.<name>``): they import the test
oracle (``tests.utils.official_detr``: the official DETR re-implementation) and the synthetic data
makers as packages of the checkout; neither is part of the installed package.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import time
from collections import defaultdict
from typing import (
    Any,
    Callable,
    ContextManager,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import torch
from torch import nn

__all__ = [
    "MethodPatch",
    "PeakMemory",
    "StageTimer",
    "add_architecture_arguments",
    "architecture",
    "build_reference_model",
    "converted_reference_weights",
    "detr_config",
    "format_table",
    "hw_size",
    "load_reference_weights",
    "patch_method",
    "summarize_iterations",
    "synchronize",
]

DeviceLike = Union[str, torch.device]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hw_size(min_side: int = 1) -> Callable[[str], Tuple[int, int]]:
    """An argparse type for ``HxW`` sizes (e.g. ``800x1199``) with both sides >= ``min_side``."""

    def parse(text: str) -> Tuple[int, int]:
        try:
            h, w = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected HxW (e.g. 800x1199), got {text!r}"
            ) from None
        if h < min_side or w < min_side:
            raise argparse.ArgumentTypeError(
                f"both sides must be at least {min_side}, got {text!r}"
            )
        return h, w

    return parse


def synchronize(device: DeviceLike) -> None:
    """Wait for queued kernels on ``device`` (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageTimer:
    """Accumulates seconds per stage name for the current iteration; ``history`` keeps one dict per
    finished iteration (``end_iteration``), including ``"total"`` (wall time of the whole iteration)
    and ``"other"`` (total minus the named stages: glue code between them)."""

    def __init__(
        self,
        device: DeviceLike = "cpu",
        clock: Optional[Callable[[], float]] = None,
        nesting: str = "outer",
    ):
        """``clock``: a monotone counter read at stage boundaries (default ``time.perf_counter``;
        e.g. a FLOP counter's running total to attribute FLOPs to stages instead of seconds).
        ``nesting``: which stage a nested stage's time goes to: ``"outer"`` (the outermost active
        stage; the nested one is ignored) or ``"inner"`` (the innermost: the enclosing stage pauses
        meanwhile, e.g. the mask head run from inside the loss)."""
        if nesting not in ("outer", "inner"):
            raise ValueError(f"StageTimer nesting must be 'outer' or 'inner', got {nesting!r}")
        self.device = torch.device(device)
        self.clock = clock or time.perf_counter
        self.nesting = nesting
        self.current: Dict[str, float] = defaultdict(float)
        self.history: List[Dict[str, float]] = []
        self._stack: List[str] = []  # active stages, outermost first
        self._start = 0.0  # clock reading when the counted stage (last) started or resumed
        self._iter_start: Optional[float] = None
        self._handles: list = []

    # -- low-level enter/exit ------------------------------------------------------------------
    def _enter(self, name: str) -> None:
        if self._stack and self.nesting == "outer":
            self._stack.append(name)
            return
        synchronize(self.device)
        now = self.clock()
        if self._stack:  # "inner": the enclosing stage pauses
            self.current[self._stack[-1]] += now - self._start
        self._stack.append(name)
        self._start = now

    def _exit(self) -> None:
        name = self._stack.pop()
        if self._stack and self.nesting == "outer":
            return
        synchronize(self.device)
        now = self.clock()
        self.current[name] += now - self._start
        self._start = now  # "inner": the enclosing stage resumes

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as ``name``."""
        self._enter(name)
        try:
            yield
        finally:
            self._exit()

    # -- iterations ---------------------------------------------------------------------------
    def start_iteration(self) -> None:
        synchronize(self.device)
        self.current = defaultdict(float)
        self._iter_start = self.clock()

    def end_iteration(self, record: bool = True) -> Dict[str, float]:
        """Close the iteration; returns its stage times (and appends them to ``history`` if
        ``record``)."""
        if self._iter_start is None:
            raise RuntimeError("StageTimer.end_iteration() without start_iteration()")
        synchronize(self.device)
        total = self.clock() - self._iter_start
        self._iter_start = None
        result = dict(self.current)
        result["other"] = max(0.0, total - sum(result.values()))
        result["total"] = total
        if record:
            self.history.append(result)
        return result

    # -- instrumentation ------------------------------------------------------------------------
    def hook_modules(self, stages: Mapping[str, Sequence[nn.Module]]) -> None:
        """Time every call of each module as its stage (forward pre/post hooks; removed by
        ``remove``)."""
        for name, modules in stages.items():
            for module in modules:
                self._handles.append(
                    module.register_forward_pre_hook(functools.partial(self._pre_hook, name))
                )
                self._handles.append(module.register_forward_hook(self._post_hook))

    def _pre_hook(self, name: str, *_args) -> None:
        self._enter(name)

    def _post_hook(self, *_args) -> None:
        self._exit()

    def wrap_method(self, obj: object, attr: str, name: str) -> None:
        """Replace ``obj.attr`` (a bound method) by a timed wrapper stored on the instance;
        ``remove`` deletes the instance attribute again, restoring the class method."""
        self._handles.append(patch_method(obj, attr, lambda: self.stage(name)))

    def remove(self) -> None:
        """Undo ``hook_modules`` and ``wrap_method``."""
        for h in reversed(self._handles):
            h.remove()
        self._handles = []

    def __enter__(self) -> "StageTimer":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class MethodPatch:
    """Handle of :func:`patch_method`; ``remove()`` puts back what ``obj.attr`` was on the instance
    before (nothing, i.e. the class method, or an earlier patch). Remove nested patches in reverse
    order."""

    _MISSING = object()

    def __init__(self, obj: object, attr: str, previous: object, wrapper: Callable):
        self.obj, self.attr, self.previous, self.wrapper = obj, attr, previous, wrapper

    def remove(self) -> None:
        current = vars(self.obj).get(self.attr, self._MISSING)
        if current is not self.wrapper:
            raise RuntimeError(
                f"{type(self.obj).__name__}.{self.attr}: patches must be removed in reverse order"
            )
        if self.previous is self._MISSING:
            delattr(self.obj, self.attr)
        else:
            setattr(self.obj, self.attr, self.previous)


def patch_method(
    obj: object,
    attr: str,
    around: Optional[Callable[[], ContextManager]] = None,
    *,
    on_return: Optional[Callable[[Any], None]] = None,
) -> MethodPatch:
    """Wrap the bound method ``obj.attr`` of this instance only (the class is untouched): every call
    runs inside a fresh ``around()`` context (if given) and its return value is passed to
    ``on_return`` (if given). Patches nest (the newest is outermost). Returns a
    :class:`MethodPatch` to undo it."""
    previous = vars(obj).get(attr, MethodPatch._MISSING)
    original: Callable = getattr(obj, attr)

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        with around() if around is not None else contextlib.nullcontext():
            result = original(*args, **kwargs)
        if on_return is not None:
            on_return(result)
        return result

    setattr(obj, attr, wrapped)
    return MethodPatch(obj, attr, previous, wrapped)


def summarize_iterations(
    history: Sequence[Mapping[str, float]], reduce: str = "mean"
) -> Dict[str, float]:
    """Per-stage ``mean`` or ``median`` over iterations (a stage missing in an iteration counts as
    0)."""
    if not history:
        raise ValueError("no timed iterations to summarise")
    keys = sorted({k for h in history for k in h})
    fn = statistics.fmean if reduce == "mean" else statistics.median
    return {k: fn([h.get(k, 0.0) for h in history]) for k in keys}


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned; floats as given."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)
        )

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


class PeakMemory:
    """``with PeakMemory(device) as pm: ...`` -> ``pm.peak_bytes``: the peak of tensor memory
    allocated inside the block above what was allocated at entry (inputs that already exist are not
    counted).

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the allocation/free events of ``torch.profiler``
    (``profile_memory=True``), accumulated in time order; this slows the block down, so use it on an
    untimed pass.
    """

    def __init__(self, device: DeviceLike = "cpu"):
        self.device = torch.device(device)
        self.peak_bytes: Optional[int] = None
        self._baseline = 0
        self._prof = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            synchronize(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            from torch.profiler import ProfilerActivity, profile

            os.environ.setdefault(
                "KINETO_LOG_LEVEL", "5"
            )  # silence Kineto's "Completed Stage" lines
            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._baseline
            return
        self._prof.__exit__(*exc)
        events = [
            e
            for e in self._prof.profiler.kineto_results.events()
            if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
        ]
        # start_us() on torch 2.3, start_ns() on torch 2.14; only the order matters
        events.sort(key=lambda e: e.start_ns() if hasattr(e, "start_ns") else e.start_us())
        running, peak = 0, 0
        for e in events:
            running += e.nbytes()
            peak = max(peak, running)
        self.peak_bytes = peak


def cpu_contention_note(threads: int) -> Optional[str]:
    """A warning when other processes already keep the CPU busy (1-minute load average + ``threads``
    > cores): multi-threaded ops then wait for descheduled worker threads, which inflates the time
    of every small op (optimizer steps, post-processing) far more than that of large
    convolutions."""
    if not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load + threads <= cores:
        return None
    hint = "; compare with --threads 1" if threads > 1 else ""
    return (
        f"note: load average {load:.2f} on {cores} cores before this run: other processes "
        "compete for the CPU, "
        f"so timings with {threads} thread(s) are inflated (small ops most){hint}"
    )


def print_done(t_start: float) -> None:
    """The scripts' last line: seconds since ``t_start`` (``time.perf_counter()``) and the load
    average now."""
    print(
        f"\ndone in {time.perf_counter() - t_start:.0f} s"
        + (f" (load average now {os.getloadavg()[0]:.2f})" if hasattr(os, "getloadavg") else "")
    )


def add_device_arguments(
    parser: argparse.ArgumentParser,
    threads_help: str = "torch CPU threads (default: leave torch's default)",
) -> None:
    """``--device`` (default cpu) and ``--threads`` (0: torch's default), the arguments of
    :func:`setup_benchmark_device`."""
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    parser.add_argument("--threads", type=int, default=0, help=threads_help)


def setup_benchmark_device(device_name: str, threads: int) -> Optional[torch.device]:
    """Shared start of the benchmark scripts: set the CPU thread count (``threads`` > 0), check the
    device, print the torch/device/threads/cores/processor/load header and, on CPU, the contention
    note. Returns the device, or None (after printing an error) when CUDA is asked for but not
    available."""
    import platform

    if threads > 0:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return None
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(
        f"torch {torch.__version__}, device {device}{gpu}, {torch.get_num_threads()} CPU threads, "
        f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
        + (f", load average {load[0]:.2f}" if load else ""),
        flush=True,
    )
    return device


def print_contention_note(device: torch.device) -> None:
    """On CPU, print :func:`cpu_contention_note` when the machine is already busy."""
    note = cpu_contention_note(torch.get_num_threads()) if device.type == "cpu" else None
    if note:
        print(note, flush=True)


# ----------------------------------------------------------------------------------------------
# model pairs
NUM_OFFICIAL_SLOTS = 250  # official panoptic classifier: 250 dataset-id slots + no-object
ARCHITECTURE_DEFAULTS = {  # the official R50 panoptic model
    "depth": 50,
    "hidden_dim": 256,
    "nheads": 8,
    "enc_layers": 6,
    "dec_layers": 6,
    "dim_feedforward": 2048,
    "num_queries": 100,
}


def add_architecture_arguments(parser: argparse.ArgumentParser) -> None:
    """``--depth --hidden-dim --nheads --enc-layers --dec-layers --dim-feedforward --num-queries``
    (defaults:
    the official R50 panoptic model)."""
    d = ARCHITECTURE_DEFAULTS
    parser.add_argument(
        "--depth",
        type=int,
        default=d["depth"],
        choices=(18, 34, 50, 101),
        help=f"ResNet depth (default {d['depth']})",
    )
    for key in (
        "hidden_dim",
        "nheads",
        "enc_layers",
        "dec_layers",
        "dim_feedforward",
        "num_queries",
    ):
        parser.add_argument(
            "--" + key.replace("_", "-"), type=int, default=d[key], help=f"default {d[key]}"
        )


def architecture(args: argparse.Namespace) -> Dict[str, int]:
    """The architecture options of :func:`add_architecture_arguments` as keyword arguments."""
    return {k: getattr(args, k) for k in ARCHITECTURE_DEFAULTS}


def build_reference_model(arch: Mapping[str, int], seed: int, dropout: float = 0.1) -> nn.Module:
    """The official ``DETRsegm`` (test oracle) with ``arch``, 250 class slots, random weights from
    ``seed`` and non-trivial frozen-BN statistics (identity BNs would hide conversion errors), on
    the CPU."""
    from tests.utils.official_detr import build_official_detr, randomize_frozen_batchnorm_

    torch.manual_seed(seed)
    ref = build_official_detr(num_classes=NUM_OFFICIAL_SLOTS, dropout=dropout, **arch)
    randomize_frozen_batchnorm_(ref, torch.Generator().manual_seed(seed))
    return ref


def detr_config(arch: Mapping[str, int], device: DeviceLike, dropout: Optional[float] = None):
    """``configs/Base-DETR.yaml`` (the official recipe) with ``arch``; the classifier keeps the
    official 251 logits (``CLASS_SLOTS dataset_id``: logit index = COCO category id, so the
    reference's weights load as they are) with the COCO panoptic metadata
    (``coco_2017_val_panoptic``: thing/stuff and ids; no
    file is read)."""
    from detr_d2.config import get_detr_cfg

    cfg = get_detr_cfg(os.path.join(REPO_ROOT, "configs", "Base-DETR.yaml"))
    cfg.MODEL.DEVICE = str(device)
    cfg.MODEL.RESNETS.DEPTH = arch["depth"]
    if arch["depth"] in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    d = cfg.MODEL.DETR
    d.HIDDEN_DIM, d.NHEADS, d.DIM_FEEDFORWARD = (
        arch["hidden_dim"],
        arch["nheads"],
        arch["dim_feedforward"],
    )
    d.ENC_LAYERS, d.DEC_LAYERS, d.NUM_OBJECT_QUERIES = (
        arch["enc_layers"],
        arch["dec_layers"],
        arch["num_queries"],
    )
    d.CLASS_SLOTS, d.NUM_CLASSES = "dataset_id", NUM_OFFICIAL_SLOTS
    if dropout is not None:
        d.DROPOUT = dropout
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ("coco_2017_val_panoptic",)
    return cfg


def converted_reference_weights(ref: nn.Module) -> Dict[str, torch.Tensor]:
    """The reference model's weights under our names
    (``detr_d2.checkpoint.convert_official_detr``)."""
    from detr_d2.checkpoint import convert_official_detr

    return convert_official_detr(
        {k: v.detach().cpu() for k, v in ref.state_dict().items()}, source="reference model"
    )


def load_reference_weights(ours: nn.Module, ref: nn.Module) -> None:
    """Load the reference's weights into ours, strictly (every tensor, none left over)."""
    incompatible = ours.load_state_dict(converted_reference_weights(ref), strict=True)
    if (
        incompatible.missing_keys or incompatible.unexpected_keys
    ):  # strict=True raises first; belt and braces
        raise RuntimeError(f"converted reference weights do not fit: {incompatible}")
