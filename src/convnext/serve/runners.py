"""What the server runs: a :class:`convnext.runtimes.base.Runner` (preprocess -> forward -> labels, and
Grad-CAM for PyTorch weights), the same interface ``predict``, ``benchmark`` and export's checks use.

A file written by ``convnext export`` plugs in as its runtime's runner (``inference.backends.load_backend``),
with the preprocessing and class names stored in the file. Grad-CAM needs PyTorch weights (gradients).
"""

from __future__ import annotations

import dataclasses

from ..errors import UserError
from ..runtimes import BY_NAME as _RUNTIMES
from ..runtimes import SERVE_BACKENDS, TORCH, require_runtime, runtime_for
from ..runtimes.base import Runner

BACKENDS = SERVE_BACKENDS
__all__ = ["BACKENDS", "Runner", "check_backend", "load_runner", "resolve_backend"]


def resolve_backend(backend: str, weights: str) -> str:
    """``auto``: the runtime of an exported file by its suffix (:func:`convnext.runtimes.runtime_for`),
    torch otherwise. ``torch`` with an exported file is one sentence (it runs in its own runtime, and has no
    gradients for Grad-CAM)."""
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r} must be one of {', '.join(BACKENDS)}")
    runtime = runtime_for(weights)
    exported = runtime.name if runtime is not TORCH else None
    if backend == "auto":
        return exported or "torch"
    if backend == "torch" and exported:
        raise UserError(f"--backend torch runs PyTorch weights; {weights} is an exported {exported} file")
    return backend


def _labelled(runner: Runner, names: list[str] | None, weights: str) -> Runner:
    """The runner with display names to serve, and ``weights`` as the user gave it (what /info reports)."""
    from ..inference.loading import display_names

    runner.labels = display_names(names, runner.num_classes)
    runner.source = str(weights)
    return runner


def load_runner(
    weights: str | None,
    model_name: str | None = None,
    *,
    backend: str = "auto",
    device: str = "auto",
    amp: str | None = None,
    ema: bool | None = None,
    img_size: int | None = None,
    crop_pct: float | None = None,
    class_names: list[str] | None = None,
) -> Runner:
    """The runner for what ``convnext predict`` accepts as --weights (tag, file, URL, HF folder, run); a
    detector or segmenter (``inference.dense.DenseRunner``) answers with boxes and masks or class shares."""
    from ..inference.dense import dense_task

    if dense_task(weights, model_name):
        from ..device import resolve_device
        from ..inference.dense import DenseRunner, load_dense

        resolve_backend(backend, weights or "")
        dense = load_dense(weights, model_name, img_size=img_size, device=resolve_device(device), ema=ema)
        if class_names is not None and len(class_names) == dense.num_classes:
            dense.names = list(class_names)
        runner = DenseRunner(dense)
        runner.source = str(weights or model_name)
        return runner
    backend = resolve_backend(backend, weights)
    if backend != "torch":
        if amp:
            from ..messages import note

            note(f"--amp does not reach into {backend}: {weights} runs as exported")
        from ..inference.backends import load_backend

        b = load_backend(weights, backend, device=device, img_size=img_size, crop_pct=crop_pct)
        return _labelled(b, class_names or b.class_names, weights)
    from ..device import amp_dtype, resolve_device
    from ..inference.cam import GradCAM
    from ..inference.loading import load_for_inference
    from ..runtimes.pytorch import TorchRunner, dtype_name

    dev = resolve_device(device)
    dtype = amp_dtype(amp, dev)
    loaded = load_for_inference(weights, model_name, ema=ema, img_size=img_size, crop_pct=crop_pct)
    names = loaded.class_names
    if class_names is not None:
        if len(class_names) != loaded.num_classes:
            raise UserError(
                f"{loaded.checkpoint} has a {loaded.num_classes}-class head but the class list has "
                f"{len(class_names)} classes"
            )
        names = class_names
    runner = TorchRunner(
        loaded.model,
        dataclasses.replace(loaded.data),
        arch=loaded.arch,
        device=dev,
        amp=dtype,
        gradcam=GradCAM,
    )
    runner.num_classes = runner.num_classes or loaded.num_classes
    runner.precision = dtype_name(dtype)  # the server reports the dtype it computes in (fp32, bf16, fp16)
    return _labelled(runner, names, weights)


def check_backend(backend: str, weights: str) -> str:
    """The resolved backend name; fails at once (before a socket opens) when its runtime is missing."""
    name = resolve_backend(backend, weights)
    require_runtime(_RUNTIMES[name], f"--backend {name}", write=False)
    return name
