"""Keep CPU training's big activations in the heap instead of fresh ``mmap`` pages every step.

Why: glibc's ``malloc`` serves any block above ``M_MMAP_THRESHOLD`` (at most 32 MiB even after its dynamic
adjustment) with a fresh ``mmap`` and hands it back on ``free``. A CPU training step allocates and frees
hundreds of activations of 10-150 MB, so each step page-faults and zero-fills gigabytes again: on ConvNeXt-T
batch 32, 5 million minor faults per few steps and a quarter of the step in the kernel. Raising the
thresholds makes ``malloc`` reuse the freed heap, which is what jemalloc and tcmalloc (the usual
``LD_PRELOAD`` advice for CPU PyTorch) do by design; every implementation trains faster with it on CPU
(BENCHMARKS.md, "Where the training lead comes from, and the allocator"). Costs nothing on GPU (CUDA has
its own caching allocator) and only changes when memory goes back to the OS: the process keeps its peak
heap until it exits.

No Python library exposes ``mallopt``, so this is ``ctypes``; it is a no-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30  # 1 GiB: above every activation of the models we train on CPU

_tuned = False


def tune_cpu_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds to 1 GiB, once per process; True if it took effect.

    Skipped (False) off Linux/glibc, when the user already chose (``MALLOC_MMAP_THRESHOLD_`` or
    ``MALLOC_TRIM_THRESHOLD_`` set, or an allocator preloaded with ``LD_PRELOAD``), or when
    ``CONVNEXT_MALLOC=default`` asks for glibc's defaults.
    """
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("CONVNEXT_MALLOC", "") == "default":
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _tuned = bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD))
    return _tuned


def allocator_tuned() -> bool:
    """Whether this process runs with the raised thresholds."""
    return _tuned
