"""The CPU fast path: the block's channel MLP (LN -> expand 4x -> GELU -> project -> scale) in row chunks.

Why by hand: autograd runs each op over the whole (N*H*W, C) activation, so a stage-1 block at batch 32
allocates five fresh 40-150 MB activations, keeps them all for backward, and streams the 4x-wide hidden
tensor through memory for every elementwise step (GELU and its backward, bias, layer scale). Here the same
math runs some thousands of pixels at a time: one big buffer per block, and the hidden chunk is reused while
warm between the two GEMMs, in forward and in backward. Compilers fuse the elementwise ops but not across
GEMMs, and no library op does this.

It is a module swap, not a flag: :class:`ChunkedBlock` is a :class:`~convnext.models.convnext.Block` with the
same parameters and state-dict names, and :func:`set_chunked_mlp` swaps it in or out. Each call chooses its
path by :func:`use_chunked_mlp` (device, dtype, grad mode, rows, graph capture), so it is never slower than
the plain ops it replaces (the thresholds are measured, BENCHMARKS.md "Per-shape rule"):

* training (grad): one ``autograd.Function`` over one forward and one backward loop (:func:`_mlp_forward`,
  :func:`_mlp_backward`), the fp32 or bf16 kernels' GEMMs and casts in it. Saved for backward: the block's
  input rows, the pre-GELU hidden ``a`` and LayerNorm's mean/rstd; the LN output and ``GELU(a)`` are
  recomputed per chunk (elementwise, no GEMM redone), half the plain ops' activation memory. Layer scale is
  folded into the projection, ``gamma * (W h + b) == (gamma W) h + gamma b``, its gradient by the chain
  rule, ``dgamma_c = sum_j dW'_cj W_cj + db'_c b_c``. Weight gradients accumulate chunk by chunk in fp32.
* inference (no grad): the same forward in :func:`mlp_chunks`; the projection accumulates straight into
  ``shortcut + b`` (no separate bias, scale or add pass).
* under CPU bf16 autocast, where the CPU has native bf16: the same loops with bf16 GEMMs
  (:class:`_ChannelMLPBf16`, :func:`mlp_chunks_bf16`), at any size; without native bf16, the fp32 paths.
* anything else (GPU, other dtypes and autocast dtypes, tracing, export, compile, a dispatch mode such as
  fake tensors or the FLOP counter, small batches): the reference ``Block.forward``. A graph must not keep
  one batch's chunk bounds or an in-place write into a view; inductor fuses elementwise ops itself; on GPU
  the loop would only add launches.

GRN (V2) blocks are never swapped: GRN needs the whole feature map between the two GEMMs.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .convnext import Block
from .cpu import cpu_has_native_bf16

# Hidden elements per chunk (rows x 4C): 16384 rows at C=96, 4096 at C=384. Large enough that few short
# parallel regions are issued (each waits for its slowest thread, which costs most on a shared CPU), small
# enough that the hidden chunk stays in cache between the two GEMMs. Measured: BENCHMARKS.md.
CHUNK_ELEMENTS = 16384 * 384

# Fewest rows (N*H*W pixels of a block's input) for which the chunked path is taken. Below, it gains nothing
# measurable and can lose: a call's fixed Python cost, and in training the per-call weight transposes and the
# autograd.Function, weigh against a few MB of activations (measured per width and rows with
# benchmarks/block_paths.py: BENCHMARKS.md, "Per-shape rule"). Batch 1 at 224 px runs the plain ops.
MIN_ROWS_TRAIN = 6144
MIN_ROWS_INFER = 4096
# The same under CPU bf16 autocast (native bf16 only), where the path is the bf16 loop below; a fused block
# (weights cast once, ``fuse.py``) takes it at any size (``prepared``).
MIN_ROWS_BF16_TRAIN = 0
MIN_ROWS_BF16_INFER = 0
# Hidden elements per chunk in bf16.
CHUNK_ELEMENTS_BF16 = 32768 * 384


def chunk_rows(hidden: int) -> int:
    return max(256, CHUNK_ELEMENTS // hidden)


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 spelling
        return torch.is_autocast_cpu_enabled()


def _cpu_autocast_dtype() -> torch.dtype:
    try:
        return torch.get_autocast_dtype("cpu")
    except (AttributeError, TypeError):  # torch < 2.4 spelling
        return torch.get_autocast_cpu_dtype()


@functools.cache
def native_bf16() -> bool:
    """This CPU has bf16 dot products (AVX512-BF16, AMX or Arm BF16): bf16 GEMMs beat fp32 here. Without
    them bf16 is emulated and slower than fp32, so bf16 blocks compute in fp32 instead (never slower)."""
    return cpu_has_native_bf16()


@functools.cache
def _onednn_bf16() -> bool:
    """oneDNN's linear with the bias and GELU fused in (``mkldnn._linear_pointwise``, what inductor emits on
    CPU) runs bf16. Measured faster than ``addmm`` in bf16 on the four stages' chunk shapes, whose bias
    broadcast pass costs as much as a small GEMM (BENCHMARKS.md, "bf16 on CPU")."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - a build without oneDNN
        return False


def _capturing() -> bool:
    """A graph is being captured (jit trace, torch.export / ONNX dynamo export, compile) or a dispatch mode
    (fake tensors, make_fx, the FLOP counter) sees every op: the plain ops, which every tool understands."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return True
    try:
        from torch.utils._python_dispatch import _get_current_dispatch_mode
    except ImportError:  # pragma: no cover - the private helper moved
        return False
    return _get_current_dispatch_mode() is not None


def chunked_path(x: Tensor, grad: bool | None = None, prepared: bool = False) -> str | None:
    """The path a fast block takes for its input ``x`` (N, C, H, W): ``"fp32"``, ``"bf16"`` or None (the
    reference ``Block.forward``).

    Only on CPU, for a float32 input, outside graph capture. Outside autocast: ``"fp32"`` with at least
    ``MIN_ROWS_TRAIN`` (with ``grad``; default: the grad mode) or ``MIN_ROWS_INFER`` pixels. Under CPU bf16
    autocast where the CPU has native bf16: ``"bf16"`` with at least ``MIN_ROWS_BF16_TRAIN`` /
    ``MIN_ROWS_BF16_INFER`` pixels (any, no grad, for a block whose bf16 weights are ``prepared``). Where it
    has not (see :func:`bf16_as_fp32`), the fp32 rule.
    """
    if x.device.type != "cpu" or _capturing():
        return None
    grad = torch.is_grad_enabled() if grad is None else grad
    rows = x.numel() // x.shape[1] if x.dim() == 4 else x.numel() // max(x.shape[-1], 1)
    if _cpu_autocast() and not bf16_as_fp32():
        # bf16 input: the first block of a stage, after autocast's downsampling conv.
        if _cpu_autocast_dtype() != torch.bfloat16 or x.dtype not in (torch.float32, torch.bfloat16):
            return None
        least = MIN_ROWS_BF16_TRAIN if grad else 0 if prepared else MIN_ROWS_BF16_INFER
        return "bf16" if rows >= least else None
    if x.dtype != torch.float32 and not (bf16_as_fp32() and x.dtype == torch.bfloat16):
        return None
    return "fp32" if rows >= (MIN_ROWS_TRAIN if grad else MIN_ROWS_INFER) else None


def bf16_as_fp32() -> bool:
    """Under CPU bf16 autocast on a CPU without native bf16, a fast block computes in fp32 (autocast off):
    emulated bf16 is slower than fp32 there, and fp32 is the more exact of the two."""
    return _cpu_autocast() and _cpu_autocast_dtype() == torch.bfloat16 and not native_bf16()


def use_chunked_mlp(x: Tensor, grad: bool | None = None) -> bool:
    """Whether a fast block leaves the reference ops for its input ``x`` (see :func:`chunked_path`)."""
    return chunked_path(x, grad) is not None


def mlp_chunks(
    x: Tensor,
    norm: tuple[Tensor, Tensor, float],
    w1t: Tensor,
    b1: Tensor,
    w2t: Tensor,
    b2: Tensor | None,
    out: Tensor,
    step: int,
) -> Tensor:
    """The fp32 inference loop: ``out (+)= GELU(LN(x) w1t + b1) w2t`` over row chunks of ``x`` (rows, C).

    ``b2=None`` accumulates into ``out`` (which holds the shortcut plus the bias), else ``out = ... + b2``.
    Training runs :func:`_mlp_forward`, which also keeps what backward needs.
    """
    rows, dim = x.shape
    ln_w, ln_b, eps = norm
    h = x.new_empty(min(step, rows), w1t.shape[1])
    for s in range(0, rows, step):
        e = min(s + step, rows)
        xn = torch.ops.aten.native_layer_norm(x[s:e], [dim], ln_w, ln_b, eps)[0]
        hc = torch.ops.aten.gelu_(torch.addmm(b1, xn, w1t, out=h[: e - s]))
        if b2 is None:
            out[s:e].addmm_(hc, w2t)
        else:
            torch.addmm(b2, hc, w2t, out=out[s:e])
    return out


def linear_bf16(x: Tensor, w: Tensor, b: Tensor | None, gelu: bool = False) -> Tensor:
    """``x w^T + b`` (then exact GELU) in bf16, ``w`` as ``nn.Linear`` holds it: oneDNN's fused linear where
    it runs bf16, else ``addmm`` (same math, rounded once to bf16 as autocast's linear is)."""
    if _onednn_bf16():
        attr, algorithm = ("gelu", "none") if gelu else ("none", "")  # "none": exact (erf) GELU
        return torch.ops.mkldnn._linear_pointwise(x, w, b, attr, [], algorithm)
    y = torch.addmm(b, x, w.t()) if b is not None else torch.mm(x, w.t())
    return torch.ops.aten.gelu_(y) if gelu else y


def mlp_chunks_bf16(
    y: Tensor,
    norm: tuple[Tensor, Tensor, float],
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    gamma: Tensor | None,
    shortcut: Tensor | None,
    out: Tensor,
    step: int,
) -> Tensor:
    """The bf16 forward loop: ``out = shortcut + gamma * (GELU(LN(y) w1^T + b1) w2^T + b2)`` over row chunks.

    ``y`` (rows, C) is bf16 (the depthwise conv's output), the weights bf16 as ``nn.Linear`` holds them,
    ``out`` float32, ``gamma`` float32 (None: folded into ``w2`` and ``b2`` already), ``shortcut`` float32 or
    bf16 (None: no residual). As autocast computes the plain
    block: LayerNorm on bf16 with fp32 statistics and affine, the GEMMs in bf16 with fp32 accumulation, each
    rounded once to bf16; the residual stream stays fp32. The projection is widened into ``out`` chunk by
    chunk (a mixed bf16 + fp32 add is an unvectorised loop in ATen, slower than a conversion and an fp32
    add: BENCHMARKS.md).
    """
    rows, dim = y.shape
    ln_w, ln_b, eps = norm
    for s in range(0, rows, step):
        e = min(s + step, rows)
        xn = torch.ops.aten.native_layer_norm(y[s:e], [dim], ln_w, ln_b, eps)[0]
        o = out[s:e]
        o.copy_(linear_bf16(linear_bf16(xn, w1, b1, gelu=True), w2, b2))
        if gamma is not None:
            o.mul_(gamma)
        if shortcut is not None:
            o.add_(shortcut[s:e].to(o.dtype))  # bf16 in a stage's first block (autocast's downsampling)
    return out


def _fold_layer_scale(w2: Tensor, b2: Tensor, gamma: Tensor | None) -> tuple[Tensor, Tensor]:
    return (w2, b2) if gamma is None else (w2 * gamma[:, None], b2 * gamma)


def bf16_chunk_rows(hidden: int) -> int:
    return max(256, CHUNK_ELEMENTS_BF16 // hidden)


class _Fp32Kernels:
    """The fp32 training loop's ops: MKL's ``addmm`` on contiguous (in, out) weights (its faster orientation
    for these GEMMs), written into preallocated chunks. ``GELU(a)`` is recomputed in backward (elementwise,
    no GEMM redone): half the plain ops' activation memory."""

    save_hidden = False
    rows = staticmethod(chunk_rows)

    @staticmethod
    def weights(
        w1: Tensor, b1: Tensor, w2g: Tensor, b2g: Tensor
    ) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
        """The forward GEMMs' weights, then the backward's ``w1`` and ``w2g`` (nn.Linear's layout)."""
        return (w1.t().contiguous(), b1, w2g.t().contiguous(), b2g), w1, w2g

    @staticmethod
    def expand(xn: Tensor, fw: tuple[Tensor, ...], out: Tensor) -> Tensor:
        return torch.addmm(fw[1], xn, fw[0], out=out)

    @staticmethod
    def project(hc: Tensor, fw: tuple[Tensor, ...], out: Tensor) -> None:
        torch.addmm(fw[3], hc, fw[2], out=out)

    @staticmethod
    def grad_chunk(g: Tensor) -> Tensor:
        return g

    @staticmethod
    def accumulate(acc: Tensor, a: Tensor, b: Tensor) -> None:
        acc.addmm_(a, b)


class _Bf16Kernels:
    """The bf16 training loop's ops: the parameters cast to bf16 once per call (as autocast does per op),
    oneDNN's fused linear + GELU where it runs bf16, each GEMM rounded once to bf16 and its weight gradient
    accumulated in fp32 across chunks (where autocast rounds the whole batch's once). The bf16 hidden after
    GELU is saved: as much memory as the fp32 path's one fp32 hidden, and recomputing GELU (an erf per
    element) would cost a measurable share of the step (BENCHMARKS.md)."""

    save_hidden = True
    rows = staticmethod(bf16_chunk_rows)

    @staticmethod
    def weights(
        w1: Tensor, b1: Tensor, w2g: Tensor, b2g: Tensor
    ) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
        fw = tuple(t.to(torch.bfloat16) for t in (w1, b1, w2g, b2g))
        return fw, fw[0], fw[2]

    @staticmethod
    def expand(xn: Tensor, fw: tuple[Tensor, ...], out: Tensor) -> Tensor:
        return out.copy_(linear_bf16(xn, fw[0], fw[1]))

    @staticmethod
    def project(hc: Tensor, fw: tuple[Tensor, ...], out: Tensor) -> None:
        out.copy_(linear_bf16(hc, fw[2], fw[3]))  # widened to the fp32 output

    @staticmethod
    def grad_chunk(g: Tensor) -> Tensor:
        return g.to(torch.bfloat16)

    @staticmethod
    def accumulate(acc: Tensor, a: Tensor, b: Tensor) -> None:
        acc += torch.mm(a, b).float()


Kernels = type[_Fp32Kernels] | type[_Bf16Kernels]


def _mlp_forward(
    ctx: Any,
    k: Kernels,
    y: Tensor,
    ln_w: Tensor,
    ln_b: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    gamma: Tensor | None,
    eps: float,
) -> Tensor:
    """The one training forward loop, ``k``'s ops: ``gamma * (GELU(LN(y) w1^T + b1) w2^T + b2)`` in row
    chunks of ``y`` (rows, C), float32 out. Layer scale is folded into the projection,
    ``gamma * (W h + b) == (gamma W) h + gamma b``. Saved: ``y``, the pre-GELU hidden ``a`` (and the hidden
    after GELU where ``k`` keeps it) and LayerNorm's mean/rstd."""
    rows, dim = y.shape
    hidden = w1.shape[0]
    step = k.rows(hidden)
    w2g, b2g = _fold_layer_scale(w2, b2, gamma)
    fw, w1k, w2k = k.weights(w1, b1, w2g, b2g)
    a = y.new_empty(rows, hidden)
    h = y.new_empty(rows if k.save_hidden else min(step, rows), hidden)
    mean, rstd = y.new_empty(rows, 1, dtype=torch.float32), y.new_empty(rows, 1, dtype=torch.float32)
    out = y.new_empty(rows, dim, dtype=torch.float32)
    for s in range(0, rows, step):
        e = min(s + step, rows)
        xn, mean[s:e], rstd[s:e] = torch.ops.aten.native_layer_norm(y[s:e], [dim], ln_w, ln_b, eps)
        hc = h[s:e] if k.save_hidden else h[: e - s]
        torch.ops.aten.gelu.out(k.expand(xn, fw, a[s:e]), out=hc)
        k.project(hc, fw, out[s:e])
    ctx.save_for_backward(y, a, h if k.save_hidden else None, mean, rstd, ln_w, ln_b, w1k, w2k, w2, b2, gamma)
    ctx.eps = eps
    return out


def _mlp_backward(ctx: Any, k: Kernels, grad: Tensor) -> tuple[Tensor | None, ...]:
    """The one backward loop: per chunk, the gradients of the projection, GELU, the expansion and
    LayerNorm; weight and bias gradients accumulate in fp32 chunk by chunk, and layer scale's comes by the
    chain rule from the folded projection's, ``dgamma_c = sum_j dW'_cj W_cj + db'_c b_c``."""
    y, a, h, mean, rstd, ln_w, ln_b, w1k, w2k, w2, b2, gamma = ctx.saved_tensors
    rows, dim = y.shape
    hidden = w1k.shape[0]
    step = k.rows(hidden)
    grad = grad.contiguous()
    gy = torch.empty_like(y)
    g_lnw, g_lnb = torch.zeros_like(ln_w), torch.zeros_like(ln_b)
    f32 = torch.float32
    g_w1, g_b1 = y.new_zeros(hidden, dim, dtype=f32), y.new_zeros(hidden, dtype=f32)
    g_w2g = y.new_zeros(dim, hidden, dtype=f32)
    gh = y.new_empty(min(step, rows), hidden)
    hbuf = None if k.save_hidden else y.new_empty(min(step, rows), hidden)
    for s in range(0, rows, step):
        e = min(s + step, rows)
        yc, ac, gc, ghc = y[s:e], a[s:e], k.grad_chunk(grad[s:e]), gh[: e - s]
        hc = h[s:e] if hbuf is None else torch.ops.aten.gelu.out(ac, out=hbuf[: e - s])
        k.accumulate(g_w2g, gc.t(), hc)
        torch.mm(gc, w2k, out=ghc)
        torch.ops.aten.gelu_backward.grad_input(ghc, ac, grad_input=ghc)  # in place: grad of a
        g_b1 += ghc.sum(0)  # bf16: fp32 accumulation inside; sum(dtype=f32) would convert ghc first
        xn = torch.ops.aten.native_layer_norm(yc, [dim], ln_w, ln_b, ctx.eps)[0]
        k.accumulate(g_w1, ghc.t(), xn)
        gy[s:e], dw, db = torch.ops.aten.native_layer_norm_backward(
            torch.mm(ghc, w1k), yc, [dim], mean[s:e], rstd[s:e], ln_w, ln_b, [True, True, True]
        )
        g_lnw += dw
        g_lnb += db
    g_b2g = grad.sum(0)
    if gamma is None:
        return gy, g_lnw, g_lnb, g_w1, g_b1, g_w2g, g_b2g, None, None
    g_gamma = (g_w2g * w2).sum(1) + g_b2g * b2
    return gy, g_lnw, g_lnb, g_w1, g_b1, g_w2g * gamma[:, None], g_b2g * gamma, g_gamma, None


class _ChannelMLP(torch.autograd.Function):
    """The training path in fp32: the shared loop with :class:`_Fp32Kernels`. Arguments: the block's rows
    after the depthwise conv, LayerNorm's weight and bias, the two linears', layer scale (or None), eps."""

    @staticmethod
    def forward(ctx: Any, *args: Any) -> Tensor:  # type: ignore[override]
        return _mlp_forward(ctx, _Fp32Kernels, *args)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        return _mlp_backward(ctx, _Fp32Kernels, grad)


class _ChannelMLPBf16(torch.autograd.Function):
    """The training path under CPU bf16 autocast: the shared loop with :class:`_Bf16Kernels`. ``y`` is the
    bf16 output of the depthwise conv, the parameters fp32; returns the branch in fp32, as the plain
    block's ``gamma * x`` gives it under autocast."""

    @staticmethod
    def forward(ctx: Any, *args: Any) -> Tensor:  # type: ignore[override]
        return _mlp_forward(ctx, _Bf16Kernels, *args)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        return _mlp_backward(ctx, _Bf16Kernels, grad)


# dwconv weight and bias, w1, b1, w2, b2 in bf16, and the fp32 layer scale (None when folded into w2, b2).
BF16Weights = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]


class ChunkedBlock(Block):
    """A V1 block (no GRN) that runs its MLP in row chunks on CPU where that is faster; same parameters.

    Under CPU bf16 autocast it runs the bf16 loop (the GEMMs in bf16, oneDNN's fused linear + GELU, the
    residual in fp32); on a CPU without native bf16 it computes in fp32 instead (emulated bf16 is slower).
    """

    chunked: ClassVar[bool] = True
    prepared: ClassVar[bool] = False  # weights prepared ahead (fuse.FusedBlock): no per-call cast to repay
    rows_per_chunk: int | None = None  # None: CHUNK_ELEMENTS // hidden (CHUNK_ELEMENTS_BF16 in bf16)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and bf16_as_fp32() and not _capturing():
            with torch.autocast("cpu", enabled=False):
                return self.forward(x.float())  # bf16 after autocast's downsampling conv
        grad = torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self.parameters())
        )
        path = chunked_path(x, grad, prepared=self.prepared)
        if path is None:
            return super().forward(x)
        if path == "bf16":
            return self._forward_bf16(x, grad)
        n, c, h, w = x.shape
        y = self.dwconv(x).permute(0, 2, 3, 1).reshape(-1, c)  # a view when x is channels_last
        if grad:
            out = _ChannelMLP.apply(
                y, self.norm.weight, self.norm.bias, self.pwconv1.weight, self.pwconv1.bias,
                self.pwconv2.weight, self.pwconv2.bias, self.gamma, self.norm.eps,
            )  # fmt: skip
            return x + self.drop_path(out.view(n, h, w, c).permute(0, 3, 1, 2))
        w1t, w2t, b2 = self._inference_weights()
        norm = (self.norm.weight, self.norm.bias, self.norm.eps)
        step = self.rows_per_chunk or chunk_rows(w1t.shape[1])
        if self.training and self.drop_path.p > 0:  # the branch alone, then the random drop
            out = mlp_chunks(y, norm, w1t, self.pwconv1.bias, w2t, b2, torch.empty_like(y), step)
            return x + self.drop_path(out.view(n, h, w, c).permute(0, 3, 1, 2))
        # The output starts as shortcut + folded bias; each chunk's projection is added into it in place.
        out = torch.add(x.permute(0, 2, 3, 1), b2).contiguous()
        mlp_chunks(y, norm, w1t, self.pwconv1.bias, w2t, None, out.view(-1, c), step)
        return out.permute(0, 3, 1, 2)  # (N, C, H, W) view of channels_last memory

    def _forward_bf16(self, x: Tensor, grad: bool) -> Tensor:
        n, c, h, w = x.shape
        norm = (self.norm.weight, self.norm.bias, self.norm.eps)
        if grad:
            y = self.dwconv(x).permute(0, 2, 3, 1).reshape(-1, c)  # bf16 (autocast), a view in channels_last
            out = _ChannelMLPBf16.apply(
                y, *norm[:2], self.pwconv1.weight, self.pwconv1.bias, self.pwconv2.weight, self.pwconv2.bias,
                self.gamma, self.norm.eps,
            )  # fmt: skip
            return x + self.drop_path(out.view(n, h, w, c).permute(0, 3, 1, 2))
        wdw, bdw, w1, b1, w2, b2, gamma = self._bf16_weights()
        y = F.conv2d(x.to(torch.bfloat16), wdw, bdw, self.dwconv.stride, self.dwconv.padding, 1, c)
        y = y.permute(0, 2, 3, 1).reshape(-1, c)
        step = self.rows_per_chunk or bf16_chunk_rows(w1.shape[0])
        f32 = torch.float32
        if self.training and self.drop_path.p > 0:
            out = mlp_chunks_bf16(y, norm, w1, b1, w2, b2, gamma, None, y.new_empty(y.shape, dtype=f32), step)
            return x + self.drop_path(out.view(n, h, w, c).permute(0, 3, 1, 2))
        out = torch.empty_like(x, dtype=f32, memory_format=torch.channels_last)
        shortcut = x.permute(0, 2, 3, 1).reshape(-1, c)  # a view when x is channels_last
        mlp_chunks_bf16(y, norm, w1, b1, w2, b2, gamma, shortcut, out.permute(0, 2, 3, 1).view(-1, c), step)
        return out

    def _bf16_weights(self) -> BF16Weights:
        """The depthwise conv and the two linears in bf16, cast per call as autocast casts its weights (never
        cached, as :meth:`_inference_weights`); layer scale stays apart (folding it would be one more pass
        over ``w2`` per call, which costs more than scaling the output at small inputs)."""
        with torch.no_grad():
            ws = (self.dwconv.weight, self.dwconv.bias, self.pwconv1.weight, self.pwconv1.bias)
            ws += (self.pwconv2.weight, self.pwconv2.bias)
            return (*(t.to(torch.bfloat16) for t in ws), self.gamma)  # type: ignore[return-value]

    def _folded_bf16_weights(self) -> BF16Weights:
        """As :meth:`_bf16_weights`, layer scale folded into ``w2`` and ``b2`` (for weights cast once)."""
        with torch.no_grad():
            w2, b2 = _fold_layer_scale(self.pwconv2.weight, self.pwconv2.bias, self.gamma)
            ws = (self.dwconv.weight, self.dwconv.bias, self.pwconv1.weight, self.pwconv1.bias, w2, b2)
            return (*(t.to(torch.bfloat16) for t in ws), None)  # type: ignore[return-value]

    def _inference_weights(self) -> tuple[Tensor, Tensor, Tensor]:
        """``w1^T``, ``(gamma w2)^T`` (contiguous: MKL's faster orientation) and ``gamma b2``.

        Rebuilt on every call, never cached: no signal says reliably that a parameter changed (fused AdamW
        and writes through ``.data`` leave the version counter alone), and the chunked path only runs where
        the GEMMs dwarf this copy (a few MB against a >= 4096-row block)."""
        with torch.no_grad():
            w2, b2 = _fold_layer_scale(self.pwconv2.weight, self.pwconv2.bias, self.gamma)
            return self.pwconv1.weight.t().contiguous(), w2.t().contiguous(), b2.clone()


def set_chunked_mlp(model: nn.Module, enabled: bool) -> nn.Module:
    """Swap every V1 block of ``model`` to :class:`ChunkedBlock` (``enabled``) or back to the reference
    :class:`Block`, in place. The block objects, parameters, hooks and state-dict names stay the same (the
    class is swapped, as ``torch.nn.utils.parametrize`` does), so an optimizer built before still holds the
    model's parameters. Returns ``model``."""
    for module in model.modules():
        if not isinstance(module, Block) or not isinstance(module.grn, nn.Identity):
            continue
        if type(module.norm) is not nn.LayerNorm:  # timm's rms/simple-norm variants: the kernels are LN's
            continue
        if enabled and type(module) is Block:
            module.__class__ = ChunkedBlock
        elif not enabled and isinstance(module, ChunkedBlock):
            module.__class__ = Block
            module.__dict__.pop("rows_per_chunk", None)
    return model
