"""``fuse_for_inference``: an eval copy of a trained ConvNeXt for CPU inference, same outputs to rounding.

The readable model in ``convnext.py`` stays as the paper writes it; this returns an equivalent eval copy whose
V1 blocks are :class:`FusedBlock` (the chunked inference path of ``chunked_mlp.py``: layer scale folded into
``pwconv2``, the MLP over row chunks with the hidden activation in cache, the projection accumulated into
the residual in place), with the folded weights prepared once and the whole network in ``channels_last``.
Parameters and state-dict names are the plain model's; a fused block takes the plain ops wherever they are
as fast (small inputs, GPU, other dtypes) and under tracing, export and compile, so ``torch.jit.trace``,
``torch.export`` and ``torch.onnx.export`` of a fused model record the plain model's graph.

``dtype=torch.bfloat16`` gives the fastest bf16 model: it runs under CPU bf16 autocast by itself (float32 in,
float32 out) and its blocks hold their weights in bf16, cast once here instead of by autocast on every call
(what makes it faster than ``autocast`` around the default model at small batches). On a CPU without native
bf16 it is the fp32 fused model: emulated bf16 would be slower.

Why it can lose: on an oversubscribed CPU the many short parallel regions wait on descheduled threads
(BENCHMARKS.md, "Under contention").
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from .chunked_mlp import BF16Weights, ChunkedBlock, native_bf16, set_chunked_mlp

# Pixels per MLP chunk in a fused model (None: the chunked path's CHUNK_ELEMENTS // hidden); tests pass small
# values to exercise ragged chunks.
CHUNK_ROWS: int | None = None

T = TypeVar("T")


class FusedBlock(ChunkedBlock):
    """A :class:`ChunkedBlock` of a model prepared by :func:`fuse_for_inference` (eval, frozen): its folded
    fp32 and bf16 weights are made once and kept, rebuilt only if a parameter is replaced or written in
    place under autograd's eye (``load_state_dict``, ``copy_``); writes through ``.data`` are not seen, nor
    writes to inference tensors (a model fused under ``torch.inference_mode``, which keeps no version
    counter: only a replaced parameter is seen there), so fuse again after changing the weights that way."""

    def _kept(self, kind: str, build: Callable[[], T]) -> T:
        key = tuple((p.data_ptr(), -1 if p.is_inference() else p._version) for p in self.parameters())
        kept = self.__dict__.setdefault("_prepared", {})
        if kind not in kept or kept[kind][0] != key:
            kept[kind] = (key, build())
        return kept[kind][1]

    def _inference_weights(self) -> tuple[Tensor, Tensor, Tensor]:
        return self._kept("fp32", super()._inference_weights)

    prepared: ClassVar[bool] = True

    def _bf16_weights(self) -> BF16Weights:
        return self._kept("bf16", self._folded_bf16_weights)


_AUTOCAST_CLASSES: dict[type, type] = {}  # model class -> its autocast-running subclass


def _base_class(cls: type) -> type:
    return next((base for base, sub in _AUTOCAST_CLASSES.items() if sub is cls), cls)


def _runs_in(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Make ``model`` (in place) run its forward under autocast to ``dtype`` and return float32 tensors.

    A class swap (as :func:`~convnext.models.set_chunked_mlp` does), so that the model keeps its type,
    attributes and methods; only ``forward`` is wrapped."""
    base = _base_class(type(model))
    if base not in _AUTOCAST_CLASSES:

        def forward(self: nn.Module, x: Tensor, *args: Any, **kwargs: Any) -> Any:
            with torch.autocast(x.device.type, dtype=self.compute_dtype):
                out = base.forward(self, x, *args, **kwargs)
            if isinstance(out, Tensor):
                return out.float()
            if isinstance(out, (list, tuple)):
                return type(out)(t.float() if isinstance(t, Tensor) else t for t in out)
            return out

        _AUTOCAST_CLASSES[base] = type(
            base.__name__, (base,), {"forward": forward, "__module__": base.__module__}
        )
    model.__class__ = _AUTOCAST_CLASSES[base]
    model.compute_dtype = dtype
    return model


def fuse_for_inference(
    model: nn.Module, chunk_rows: int | None = CHUNK_ROWS, dtype: torch.dtype | None = None
) -> nn.Module:
    """An eval-mode, frozen copy of ``model`` with every V1 block fused and the network in channels_last.

    The input model is left untouched. V2 (GRN) blocks stay as they are: GRN needs the whole feature map,
    so it cannot be chunked; they still gain from channels_last. Outputs match the plain model to ~1e-5.

    ``dtype=torch.bfloat16``: the copy computes in bf16 where autocast would (its logits match autocast of
    the plain model to bf16 rounding) and takes and returns float32; its ``compute_dtype`` says which it
    runs: bf16, or float32 on a CPU without native bf16 (unless the model is on a GPU).
    """
    if dtype not in (None, torch.float32, torch.bfloat16):
        raise ValueError(f"fuse_for_inference: dtype must be torch.float32 or torch.bfloat16, not {dtype}")
    fused = copy.deepcopy(model).eval().requires_grad_(False)
    fused.__class__ = _base_class(type(fused))
    set_chunked_mlp(fused, True)
    fused = fused.to(memory_format=torch.channels_last)
    run_bf16 = dtype == torch.bfloat16 and (
        native_bf16() or any(p.device.type != "cpu" for p in fused.parameters())
    )
    for module in fused.modules():
        if isinstance(module, ChunkedBlock):
            module.__class__ = FusedBlock
            if chunk_rows is not None:
                module.rows_per_chunk = chunk_rows
            module._bf16_weights() if run_bf16 else module._inference_weights()  # prepared now, kept
    if run_bf16:
        return _runs_in(fused, torch.bfloat16)
    fused.compute_dtype = torch.float32
    return fused


optimize_for_inference = fuse_for_inference
