"""``fuse_for_inference``: an eval copy of a trained ConvNeXt for CPU inference, same outputs to rounding.

The readable model in ``convnext.py`` stays as the paper writes it; this returns an equivalent eval copy whose
V1 blocks are :class:`FusedBlock` (the chunked inference path of ``chunked_mlp.py``: layer scale folded into
``pwconv2``, the MLP over row chunks with the hidden activation in cache, the projection accumulated into
the residual in place), with the folded weights prepared once and the whole network in ``channels_last``.
Parameters and state-dict names are the plain model's; a fused block takes the plain ops wherever they are
as fast (small inputs, GPU, other dtypes) and under tracing, export and compile, so ``torch.jit.trace``,
``torch.export`` and ``torch.onnx.export`` of a fused model record the plain model's graph.
Why it can lose: on an oversubscribed CPU the many short parallel regions wait on descheduled threads
(BENCHMARKS.md, "Under contention").
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .chunked_mlp import ChunkedBlock, set_chunked_mlp

# Pixels per MLP chunk in a fused model (None: the chunked path's CHUNK_ELEMENTS // hidden); tests pass small
# values to exercise ragged chunks.
CHUNK_ROWS: int | None = None


class FusedBlock(ChunkedBlock):
    """A :class:`ChunkedBlock` of a model prepared by :func:`fuse_for_inference` (eval, frozen, weights
    folded ahead of the first call)."""


def fuse_for_inference(model: nn.Module, chunk_rows: int | None = CHUNK_ROWS) -> nn.Module:
    """An eval-mode, frozen copy of ``model`` with every V1 block fused and the network in channels_last.

    The input model is left untouched. V2 (GRN) blocks stay as they are: GRN needs the whole feature map,
    so it cannot be chunked; they still gain from channels_last. Outputs match the plain model to ~1e-5.
    """
    fused = copy.deepcopy(model).eval().requires_grad_(False)
    set_chunked_mlp(fused, True)
    for module in fused.modules():
        if isinstance(module, ChunkedBlock):
            module.__class__ = FusedBlock
            if chunk_rows is not None:
                module.rows_per_chunk = chunk_rows
            module._inference_weights()  # prepared now, not on the first call
    return fused.to(memory_format=torch.channels_last)


optimize_for_inference = fuse_for_inference
