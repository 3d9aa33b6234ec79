"""Timing on a noisy machine: interleaved rounds (every contestant once per round, so whatever else the
machine does hits them alike), ratios of medians with the per-round spread, peak memory, and the machine's
matmul peak timed in the same rounds so a figure can be read as a fraction of what the hardware can do."""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


class PeakRSS:
    """Peak resident set size while the block runs, sampled every millisecond by a thread.

    The C allocator returns big blocks to the OS at once, so the RSS after a step says nothing about the peak,
    and ``ru_maxrss`` is a process-wide high-water mark; sampling is the honest measure without psutil-only
    APIs. Falls back to the ``ru_maxrss`` delta where /proc is missing.
    """

    def __init__(self) -> None:
        self._read, self.method = _rss_reader()
        self.peak = 0

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        if self._read is None:
            import resource

            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            yield
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
            return
        read = self._read
        base = read()
        top = [base]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                top[0] = max(top[0], read())
                time.sleep(0.001)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            top[0] = max(top[0], read())
            self.peak = top[0] - base


def _rss_reader() -> tuple[Callable[[], int] | None, str]:
    """How to read this process's RSS (psutil, else /proc/self/statm, else nothing) and how to say so."""
    try:
        import psutil

        proc = psutil.Process()
        return (lambda: proc.memory_info().rss), "CPU: peak RSS - RSS before, psutil sampled every 1 ms"
    except ImportError:
        pass
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    if not os.path.exists("/proc/self/statm"):
        return None, "CPU: resource.getrusage ru_maxrss delta (high-water mark: a lower bound)"

    def read() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    return read, "CPU: peak RSS - RSS before, /proc/self/statm sampled every 1 ms"


def measure_memory(step: Callable[[], Any], device: torch.device) -> tuple[float, str]:
    """Peak memory of one call of ``step`` in MiB, and how it was measured."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA: torch.cuda.max_memory_allocated"
    rss = PeakRSS()
    with rss.measure():
        step()
    return rss.peak / 2**20, rss.method


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call, the device's queue drained before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def gemm_side(flops_per_s: float, budget_s: float = 1.0, largest: int = 2048, smallest: int = 256) -> int:
    """The side of a square GEMM that takes about ``budget_s`` at ``flops_per_s``, a multiple of 256 between
    ``smallest`` and ``largest``. A fixed 2048 is quick where the dtype is native, but bf16 on a CPU without
    AVX512-BF16 or AMX is emulated, and there one 2048 GEMM per round took longer than the model's steps
    (BENCHMARKS.md, "The peak GEMM where bf16 is emulated")."""
    side = (budget_s * flops_per_s / 2.0) ** (1.0 / 3.0)
    return int(min(largest, max(smallest, side // 256 * 256)))


def matmul_peak_step(
    device: torch.device, dtype: torch.dtype, n: int = 2048
) -> tuple[Callable[[], Any], float]:
    """A large square GEMM and its FLOP count: the machine's practical peak for this dtype. Its side is at
    most ``n``, smaller where one probe says the dtype is too slow for a 2048 GEMM to be a timing step."""
    probe = 256
    a = torch.randn(probe, probe, device=device).to(dtype)
    torch.mm(a, a)  # first call: kernel selection and allocation, not the rate
    rate = 2.0 * probe**3 / max(time_call(lambda: torch.mm(a, a), device), 1e-9)
    n = gemm_side(rate, largest=n)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return (lambda: torch.mm(a, b)), 2.0 * n**3


@dataclass
class Rounds:
    """Seconds per call, per contestant, over the interleaved rounds."""

    times: dict[str, list[float]] = field(default_factory=dict)
    latency: dict[str, list[float]] = field(default_factory=dict)  # batch-1 calls, 3 per round
    gemm: list[float] = field(default_factory=list)


def interleaved_rounds(
    steps: dict[str, Callable[[], Any]],
    latency_steps: dict[str, Callable[[], Any]],
    gemm: Callable[[], Any],
    device: torch.device,
    repeats: int,
    say: Callable[[str], None],
) -> Rounds:
    """``repeats`` rounds of: the GEMM once, every step once, then every batch-1 step three times, in turn."""
    out = Rounds({n: [] for n in steps}, {n: [] for n in latency_steps})
    for r in range(repeats):
        say(f"round {r + 1}/{repeats}")
        out.gemm.append(time_call(gemm, device))
        for name, step in steps.items():  # round-robin: every contestant sees the same machine state
            out.times[name].append(time_call(step, device))
        for _ in range(3):
            for name, step in latency_steps.items():
                out.latency[name].append(time_call(step, device))
    return out


def ratio_of_medians(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """median(a) / median(b): the ratio of the medians printed beside it, so a table's columns agree (a
    median of per-round ratios can fall on the other side of 1 from the medians themselves)."""
    return statistics.median(numerators) / statistics.median(denominators)


def ratio_spread(numerators: Sequence[float], denominators: Sequence[float]) -> tuple[float, float]:
    """The lowest and highest per-round a / b (each round times both in turn): how far a single round's
    ratio strays from the ratio of medians."""
    ratios = [a / b for a, b in zip(numerators, denominators)]
    return min(ratios), max(ratios)


def device_name(dev: torch.device) -> str:
    """The GPU's name, or the CPU's model and core count."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    import platform

    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
