"""Opening any weights as a runner: PyTorch weights, or a file of one of :mod:`convnext.runtimes`.

``open_runner`` is what ``predict``-like callers use, ``load_backend`` what ``convnext serve`` plugs in for
an exported file. The runners themselves, the metadata exported files carry and the table of runtimes live
in :mod:`convnext.runtimes`; the names below are re-exported from there for the callers of before.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..runtimes import BY_NAME, EXPORT_SUFFIXES, TORCH, is_exported, require, runtime_for  # noqa: F401
from ..runtimes.base import (  # noqa: F401 (re-exported)
    INPUT_NAME,
    META_KEY,
    OUTPUT_NAME,
    ExportMeta,
    Runner,
    RunnerModule,
    open_exported,
    relative_diff,
    resize_data,
)
from ..runtimes.pytorch import TorchRunner


def _runs_on(name: str, runner: Runner) -> bool:
    """Whether ``runner`` is of the runtime called ``name`` (an int8 IR is an OpenVINO file too)."""
    return runner.backend.partition("-")[0] == name


def load_backend(
    weights: str,
    backend: str,
    *,
    img_size: int | None = None,
    crop_pct: float | None = None,
    device: str = "cpu",
    threads: int | None = None,
) -> Runner:
    """``convnext serve``'s hook: the runner for an exported file, which must be of ``backend`` (a runtime
    that runs files: onnxruntime | openvino | pt2), with ``img_size``/``crop_pct`` applied."""
    file_backends = [r.name for r in BY_NAME.values() if r.suffix]
    if backend not in file_backends:
        raise UserError(f"backend {backend!r} runs no exported file; use {', '.join(file_backends)}")
    runner = open_exported(weights, device=device, threads=threads)
    if not _runs_on(backend, runner):
        raise UserError(f"{weights} runs on {runner.backend}, not on --backend {backend}")
    resize_data(runner, str(weights), img_size, crop_pct)
    return runner


def open_runner(
    weights: str,
    model: str | None = None,
    *,
    device: str | torch.device = "cpu",
    amp: str | None = None,
    fuse: bool = False,
    ema: bool | None = None,
    threads: int | None = None,
) -> Runner:
    """A runner for anything ``predict`` takes: an exported file (by its suffix,
    :func:`convnext.runtimes.runtime_for`), or PyTorch weights (file, URL, tag, HF folder, run folder) run
    by :class:`TorchRunner` with ``amp`` (none | bf16 | fp16) autocast."""
    if runtime_for(weights) is not TORCH:
        return open_exported(weights, device=str(device), threads=threads)
    from ..device import amp_dtype, resolve_device
    from .loading import load_for_inference

    dev = resolve_device(str(device))
    loaded = load_for_inference(weights, model, ema=ema)
    return TorchRunner(
        loaded.model,
        loaded.data,
        arch=loaded.arch,
        class_names=loaded.class_names,
        device=dev,
        amp=amp_dtype(amp, dev),
        fuse=fuse,
        source=loaded.checkpoint,
    )
