"""Keep freed CPU memory in the process for the next tensors (``cfg.CPU_REUSE_FREED_MEMORY``).

Eager PyTorch allocates each large CPU tensor with glibc's ``malloc``, which serves blocks over
32 MiB (and, by default, most over 128 KiB) with a fresh ``mmap`` and returns them to the
kernel on ``free``. The next forward pass asks for the same sizes again and the kernel zero-fills
every page on first touch: one R50 panoptic pass at 800x1199 took about 215,000 minor page faults
and 0.35 s of system CPU time on 2 cores, most of the gap to ONNX Runtime, whose arena keeps its
memory (as PyTorch's own CUDA caching allocator does on GPUs). :func:`reuse_freed_cpu_memory`
tells glibc to serve large blocks from its heap and not to give freed heap memory back
(``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)``): after the first pass
there are no page faults and the results are the same bits. The cost: the process keeps the
peak of its CPU memory until it exits (resident size does not shrink after a large image).

A process-wide setting, applied once by ``tools/train_net.py`` (``detr_d2.engine.setup``) and
:class:`detr_d2.DetrPanopticPredictor` (``tools/demo.py``) when ``MODEL.DEVICE`` is ``cpu`` and
``CPU_REUSE_FREED_MEMORY`` is true (the default); glibc only (Linux), elsewhere a no-op. The same
effect from outside the process: jemalloc or tcmalloc via ``LD_PRELOAD``.
"""

import ctypes
import ctypes.util
import logging
import platform

__all__ = ["reuse_freed_cpu_memory", "apply_cpu_memory_setting"]

logger = logging.getLogger(__name__)

# glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_NEVER = 2**31 - 1  # mallopt takes an int: its largest value (2 GiB) stands for never

_applied = False


def reuse_freed_cpu_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse (module docstring). Returns whether
    the setting is in effect (``False`` without glibc). Idempotent."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        logger.debug("reuse_freed_cpu_memory: not glibc (%s), left as is", platform.libc_ver())
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        mallopt = libc.mallopt
    except (OSError, AttributeError) as e:
        logger.debug("reuse_freed_cpu_memory: no mallopt (%s), left as is", e)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_NEVER) == 1
    _applied = ok
    if ok:
        logger.info(
            "CPU_REUSE_FREED_MEMORY: freed CPU memory is kept for the next tensors (no page "
            "faults per pass; the process keeps its peak memory)"
        )
    return ok


def apply_cpu_memory_setting(cfg) -> bool:
    """:func:`reuse_freed_cpu_memory` when ``cfg.MODEL.DEVICE`` is ``cpu`` and
    ``cfg.CPU_REUSE_FREED_MEMORY`` is true; returns whether it is in effect."""
    if not cfg.get("CPU_REUSE_FREED_MEMORY", False):
        return _applied
    if str(cfg.MODEL.DEVICE).split(":")[0] != "cpu":
        return _applied
    return reuse_freed_cpu_memory()
