"""Micro-benchmarks behind the "What was tried for speed" table in BENCHMARKS.md (medians, CPU).

.venv/bin/python benchmarks/micro_ops.py gemm     # weight-gradient GEMM orientations on the chunk shapes
.venv/bin/python benchmarks/micro_ops.py dwconv   # 7x7 depthwise conv backward, split by output
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch


def _median_s(fn: Callable[[], object], n: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _gemm_shape(rows: int, c: int) -> None:
    g, h = torch.randn(rows, c), torch.randn(rows, 4 * c)
    acc, acc_t, w = torch.zeros(c, 4 * c), torch.zeros(4 * c, c), torch.randn(c, 4 * c)
    gflop = 2 * rows * c * 4 * c / 1e9
    cases = {
        "dW += g^T h": lambda: acc.addmm_(g.t(), h),
        "dW^T += h^T g": lambda: acc_t.addmm_(h.t(), g),
        "g @ W": lambda: torch.mm(g, w),
    }
    line = "  ".join(f"{k}: {gflop / _median_s(f, 30):.0f}" for k, f in cases.items())
    print(f"rows {rows} C {c} (GFLOP/s)  {line}")


def gemm() -> None:
    """GFLOP/s of the chunked MLP's backward GEMMs in both orientations, per stage of ConvNeXt-T."""
    for rows, c in [(4096, 96), (2048, 192), (1024, 384), (512, 768)]:
        _gemm_shape(rows, c)


def _dwconv_shape(n: int, c: int, hw: int, fmt: torch.memory_format) -> None:
    x = torch.randn(n, c, hw, hw).contiguous(memory_format=fmt)
    g = torch.randn(n, c, hw, hw).contiguous(memory_format=fmt)
    w = torch.randn(c, 1, 7, 7)

    def bwd(mask: list[bool]) -> Callable[[], object]:
        return lambda: torch.ops.aten.convolution_backward(
            g, x, w, [c], [1, 1], [3, 3], [1, 1], False, [0, 0], c, mask
        )

    cases = {
        "fwd": lambda: torch.conv2d(x, w, None, 1, 3, 1, c),
        "grad input": bwd([True, False, False]),
        "grad weight": bwd([False, True, False]),
        "grad bias": bwd([False, False, True]),
        "all": bwd([True, True, True]),
    }
    line = "  ".join(f"{k} {1e3 * _median_s(f, 10):.1f}" for k, f in cases.items())
    name = "NHWC" if fmt is torch.channels_last else "NCHW"
    print(f"{n}x{c}x{hw}x{hw} {name} (ms)  {line}")


def dwconv() -> None:
    """Milliseconds of oneDNN's depthwise backward for each requested gradient, NHWC and NCHW."""
    for n, c, hw in [(32, 96, 56), (32, 384, 14)]:
        for fmt in (torch.channels_last, torch.contiguous_format):
            _dwconv_shape(n, c, hw, fmt)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["gemm", "dwconv"])
    {"gemm": gemm, "dwconv": dwconv}[p.parse_args().what]()
