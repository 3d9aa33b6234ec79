"""The block's channel MLP (LN -> expand 4x -> GELU -> project -> layer scale) in row chunks, on CPU.

Why by hand: autograd runs each op over the whole (N*H*W, C) activation, so a stage-1 block at batch 32
allocates five fresh 40-150 MB activations, keeps them all for backward, and streams the 4x-wide hidden
tensor through memory for every elementwise step (GELU and its backward, bias, layer scale). Here one
``autograd.Function`` does the same math some thousands of pixels at a time: one big buffer per block, and
the hidden chunk is reused while warm between the two GEMMs, in forward and in backward. Compilers fuse the
elementwise ops but not across GEMMs, and no library op does this.

What it changes, with the same math (equal to the plain ops to float rounding; tests/test_models.py checks
outputs and every gradient):

* Saved for backward: the block's input rows, the pre-GELU hidden ``a`` and LayerNorm's mean/rstd. The LN
  output and ``GELU(a)`` are recomputed per chunk (elementwise work, no GEMM is redone); the plain ops also
  keep the LN output, ``GELU(a)`` and the projection: half the activation memory.
* Layer scale is folded into the projection, ``gamma * (W h + b) == (gamma W) h + gamma b``; its gradient
  follows by the chain rule, ``dgamma_c = sum_j dW'_cj W_cj + db'_c b_c``, with no extra pass over the rows.
* Weight gradients accumulate chunk by chunk with ``addmm_`` into one buffer.

Measured on 2 CPU cores, ConvNeXt-T batch 32 (BENCHMARKS.md): 1.16-1.24x timm's and torchvision's training
step in a default process, where glibc page-faults every fresh big activation (our plain ops: 0.99-1.03x).
Most of that is the allocation: with the allocator tuned (``engine/allocator.py``, as ``convnext train``
runs) all three are level, their GEMMs at the machine's matmul peak. The memory saving holds either way.

Used by :class:`~convnext.models.convnext.Block` on CPU in float32 (training and plain eval); on GPU, under
autocast, compile, export and jit tracing the block runs the plain ops (launch-bound many-kernel loops on
GPU; dtype handling belongs to autocast; inductor fuses the elementwise ops itself; a graph should not keep
one batch's chunk bounds). ``set_chunked_mlp(model, False)`` or ``model.chunked_mlp=false`` switches it off.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

# Hidden elements per chunk (rows x 4C): 16384 rows at C=96, 4096 at C=384. Measured on the whole ConvNeXt-T
# step (BENCHMARKS.md): 4.46 images/s against 4.20 with 4096 rows at C=96, 4.29 with 32768; and with other
# processes on the cores, small chunks lose most (many short parallel regions each wait for a descheduled
# thread): 16384 rows stayed level with the plain ops where 4096 rows fell to 0.84x.
CHUNK_ELEMENTS = 16384 * 384


def chunk_rows(hidden: int) -> int:
    return max(256, CHUNK_ELEMENTS // hidden)


def use_chunked_mlp(x: Tensor) -> bool:
    """Whether the chunked path applies: float32 on CPU, outside autocast, compile, export and jit tracing
    (a trace would bake this batch's chunk bounds into the graph)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not _cpu_autocast()
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
    )


def set_chunked_mlp(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch every V1 block of ``model`` between the chunked MLP and the plain ops (e.g. on a shared CPU,
    where many small parallel regions wait on descheduled threads: see BENCHMARKS.md)."""
    for module in model.modules():
        if hasattr(module, "chunked"):
            module.chunked = enabled
    return model


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 spelling
        return torch.is_autocast_cpu_enabled()


def _layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    return torch.ops.aten.native_layer_norm(x, [x.shape[-1]], weight, bias, eps)


def _fold_layer_scale(w2: Tensor, b2: Tensor, gamma: Tensor | None) -> tuple[Tensor, Tensor]:
    return (w2, b2) if gamma is None else (w2 * gamma[:, None], b2 * gamma)


def _forward_chunks(
    x: Tensor,
    ln_w: Tensor,
    ln_b: Tensor,
    eps: float,
    w1: Tensor,
    b1: Tensor,
    w2g: Tensor,
    b2g: Tensor,
    save: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """``out`` and, if ``save``, what backward needs: the pre-GELU hidden ``a`` and LN's mean and rstd."""
    rows, dim = x.shape
    hidden = w1.shape[0]
    step = chunk_rows(hidden)
    w1t, w2gt = w1.t().contiguous(), w2g.t().contiguous()  # (in, out): MKL's faster orientation
    out = x.new_empty(rows, dim)
    h = x.new_empty(min(step, rows), hidden)
    a = mean = rstd = None
    if save:
        a, mean, rstd = x.new_empty(rows, hidden), x.new_empty(rows, 1), x.new_empty(rows, 1)
    for s in range(0, rows, step):
        e = min(s + step, rows)
        xn, m, r = _layer_norm(x[s:e], ln_w, ln_b, eps)
        hc = h[: e - s]
        if save:
            mean[s:e], rstd[s:e] = m, r
            torch.addmm(b1, xn, w1t, out=a[s:e])
            torch.ops.aten.gelu.out(a[s:e], out=hc)
        else:
            torch.ops.aten.gelu_(torch.addmm(b1, xn, w1t, out=hc))
        torch.addmm(b2g, hc, w2gt, out=out[s:e])
    return out, a, mean, rstd


class _ChannelMLP(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        ln_w: Tensor,
        ln_b: Tensor,
        w1: Tensor,
        b1: Tensor,
        w2: Tensor,
        b2: Tensor,
        gamma: Tensor | None,
        eps: float,
    ) -> Tensor:
        w2g, b2g = _fold_layer_scale(w2, b2, gamma)
        out, a, mean, rstd = _forward_chunks(x, ln_w, ln_b, eps, w1, b1, w2g, b2g, save=True)
        ctx.save_for_backward(x, a, mean, rstd, ln_w, ln_b, w1, w2, b2, gamma, w2g)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, a, mean, rstd, ln_w, ln_b, w1, w2, b2, gamma, w2g = ctx.saved_tensors
        rows, dim = x.shape
        hidden = w1.shape[0]
        step = chunk_rows(hidden)
        grad = grad.contiguous()
        gx = torch.empty_like(x)
        g_lnw, g_lnb = torch.zeros_like(ln_w), torch.zeros_like(ln_b)
        g_w1, g_b1 = torch.zeros_like(w1), w1.new_zeros(hidden)
        g_w2g = torch.zeros_like(w2)
        h = x.new_empty(min(step, rows), hidden)
        gh = x.new_empty(min(step, rows), hidden)
        for s in range(0, rows, step):
            e = min(s + step, rows)
            xc, ac, gc, hc, ghc = x[s:e], a[s:e], grad[s:e], h[: e - s], gh[: e - s]
            torch.ops.aten.gelu.out(ac, out=hc)
            g_w2g.addmm_(gc.t(), hc)
            torch.mm(gc, w2g, out=ghc)
            torch.ops.aten.gelu_backward.grad_input(ghc, ac, grad_input=ghc)  # in place: grad of a
            g_b1 += ghc.sum(0)
            xn = _layer_norm(xc, ln_w, ln_b, ctx.eps)[0]
            g_w1.addmm_(ghc.t(), xn)
            gx[s:e], dw, db = torch.ops.aten.native_layer_norm_backward(
                ghc @ w1, xc, [dim], mean[s:e], rstd[s:e], ln_w, ln_b, [True, True, True]
            )
            g_lnw += dw
            g_lnb += db
        g_b2g = grad.sum(0)
        if gamma is None:
            return gx, g_lnw, g_lnb, g_w1, g_b1, g_w2g, g_b2g, None, None
        g_gamma = (g_w2g * w2).sum(1) + g_b2g * b2
        return gx, g_lnw, g_lnb, g_w1, g_b1, g_w2g * gamma[:, None], g_b2g * gamma, g_gamma, None


def chunked_mlp(
    x: Tensor, norm: nn.LayerNorm, fc1: nn.Linear, fc2: nn.Linear, gamma: Tensor | None
) -> Tensor:
    """``gamma * fc2(GELU(fc1(norm(x))))`` over (..., C) channels-last ``x``, chunked over its pixels."""
    shape = x.shape
    rows = x.reshape(-1, shape[-1])
    if torch.is_grad_enabled():
        out = _ChannelMLP.apply(
            rows, norm.weight, norm.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias, gamma, norm.eps
        )
    else:  # no_grad / inference_mode: the same chunks, nothing kept
        w2g, b2g = _fold_layer_scale(fc2.weight, fc2.bias, gamma)
        out = _forward_chunks(rows, norm.weight, norm.bias, norm.eps, fc1.weight, fc1.bias, w2g, b2g, False)[
            0
        ]
    return out.view(shape)
