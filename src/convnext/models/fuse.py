"""Inference-only rewrites of a trained ConvNeXt: same outputs (to float rounding), faster on CPU.

The readable model in ``convnext.py`` stays as the paper writes it; this module turns a trained copy into an
equivalent eval model. What it changes, each measured faster (figures in BENCHMARKS.md):

* Layer scale is folded into ``pwconv2``: ``gamma * (W h + b) == (gamma W) h + gamma b``.
* The whole network runs in ``channels_last`` memory, so every ``permute`` to (N, H, W, C) is a free view and
  the 1x1 convs (``nn.Linear``) read the data in place.
* The block's MLP runs over row chunks of the (N*H*W, C) activations: expand -> GELU -> project for a few
  thousand pixels at a time, so the 4x-wide hidden activation stays in the CPU cache instead of
  streaming a hundred megabytes through memory. The projection accumulates straight into the residual
  (``addmm_``), so there is no separate bias, scale or add pass. On GPU the whole tensor is one chunk (many
  small kernels would only add launch latency).

Measured on 2 CPU cores: 1.4x timm's and torchvision's images/s at batch 32 when the machine is ours; when
other processes oversubscribe the cores, the ~1000 small parallel regions per forward wait on descheduled
threads and the plain model is faster (BENCHMARKS.md, "Under contention").
Nothing here is differentiable on purpose: a fused model is for ``torch.inference_mode()``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .convnext import Block

# Pixels per MLP chunk: measured on ConvNeXt-T batch 32 (BENCHMARKS.md), 1024 and 4096 rows are equally fast
# (hidden chunk 1.5-6 MiB at C=96), 16384 is 8% slower (out of cache). The larger size issues 4x fewer
# parallel regions per forward, which is what costs time when other processes share the cores.
CHUNK_ROWS = 4096


class FusedBlock(nn.Module):
    """A V1 ConvNeXt block for inference: folded layer scale, chunked MLP, residual accumulated in place."""

    def __init__(self, block: Block, chunk_rows: int = CHUNK_ROWS) -> None:
        super().__init__()
        self.dwconv = block.dwconv
        self.chunk_rows = chunk_rows
        self.eps = block.norm.eps
        dim = block.dwconv.in_channels
        w2, b2 = block.pwconv2.weight.detach(), block.pwconv2.bias.detach()
        if block.gamma is not None:
            g = block.gamma.detach()
            w2, b2 = w2 * g[:, None], b2 * g
        self.register_buffer("ln_weight", block.norm.weight.detach().clone())
        self.register_buffer("ln_bias", block.norm.bias.detach().clone())
        # Contiguous (in, out) matrices: measured a few % faster in MKL's GEMM than transposed views.
        self.register_buffer("w1t", block.pwconv1.weight.detach().t().contiguous())
        self.register_buffer("b1", block.pwconv1.bias.detach().clone())
        self.register_buffer("w2t", w2.t().contiguous())
        self.register_buffer("b2", b2.clone())
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        y = self.dwconv(x).permute(0, 2, 3, 1)  # a view when x is channels_last
        y = F.layer_norm(y, (c,), self.ln_weight, self.ln_bias, self.eps).reshape(-1, c)  # one pass, C wide
        # The output starts as shortcut + folded bias; each chunk's projection is added into it in place.
        out = torch.add(x.permute(0, 2, 3, 1), self.b2).contiguous()
        rows = out.view(-1, c)
        w1t, w2t = self.w1t, self.w2t
        step = self.chunk_rows if x.device.type == "cpu" else rows.shape[0]
        hidden = torch.empty(min(step, rows.shape[0]), w1t.shape[1], dtype=x.dtype, device=x.device)
        for start in range(0, rows.shape[0], step):
            part = y[start : start + step]
            hid = hidden[: part.shape[0]]
            torch.addmm(self.b1, part, w1t, out=hid)
            torch.ops.aten.gelu_(hid)  # exact (erf) GELU, as nn.GELU(), in place
            rows[start : start + step].addmm_(hid, w2t)
        return out.permute(0, 3, 1, 2)  # (N, C, H, W) view of channels_last memory


def fuse_for_inference(model: nn.Module, chunk_rows: int = CHUNK_ROWS) -> nn.Module:
    """An eval-mode copy of ``model`` with every V1 block fused and the network in channels_last memory.

    The input model is left untouched. V2 (GRN) blocks are kept as they are: GRN needs the whole feature map,
    so it cannot be chunked; they still gain from channels_last. Outputs match the plain model to ~1e-5.
    """
    fused = copy.deepcopy(model).eval()
    for module in list(fused.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Block):
                setattr(module, name, FusedBlock(child, chunk_rows))
    fused.requires_grad_(False)
    return fused.to(memory_format=torch.channels_last)


optimize_for_inference = fuse_for_inference
