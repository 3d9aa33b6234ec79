"""What the server runs: a Runner turns one decoded image into a model input and a batch into logits.

The server only knows this interface (preprocess -> batch -> logits, optionally Grad-CAM), so a file
written by ``convnext export`` (.onnx, .xml, .pt2) plugs in as a ``CallableRunner`` around the runner that
``convnext.inference.backends.load_backend`` opens, with the preprocessing and class names stored in the
file. Grad-CAM needs PyTorch weights (gradients): only ``TorchRunner`` offers it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data.config import DataConfig
from ..data.transforms import build_eval_transform
from ..errors import UserError

BACKENDS = ("auto", "torch", "onnxruntime", "openvino", "pt2")
_BY_SUFFIX = {".onnx": "onnxruntime", ".xml": "openvino", ".pt2": "pt2"}
_RUNTIME = {"onnxruntime": "onnxruntime", "openvino": "openvino"}  # backend -> the package it needs


class Runner:
    """preprocess (one uint8 image -> float input, any thread) -> forward (a stacked batch -> float32
    logits on the CPU, one call at a time) -> labels. ``cam`` is optional (torch only)."""

    backend = "?"
    supports_cam = False

    def __init__(
        self,
        arch: str,
        num_classes: int,
        labels: list[str],
        data: DataConfig,
        *,
        precision: str = "fp32",
        device: str = "cpu",
        weights: str = "",
    ) -> None:
        if len(labels) != num_classes:
            raise UserError(f"{len(labels)} class names for a {num_classes}-class model")
        self.arch, self.num_classes, self.labels, self.data = arch, num_classes, labels, data
        self.precision, self.device, self.weights = precision, device, weights
        self.transform = build_eval_transform(data)

    def preprocess(self, img: Tensor) -> Tensor:
        return self.transform(img)

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def cam(self, x: Tensor, classes: Tensor) -> Tensor:
        raise UserError(f"Grad-CAM needs PyTorch weights; this server runs an exported {self.backend} file")

    def describe(self) -> dict[str, Any]:
        d = self.data
        prep = {
            "img_size": d.img_size,
            "crop_pct": d.crop_pct,
            "resize_shorter_side": int(d.img_size / d.crop_pct),
            "interpolation": d.interpolation,
            "mean": list(d.mean),
            "std": list(d.std),
        }
        if hasattr(d, "crop_mode"):
            prep["crop_mode"] = d.crop_mode
        return {
            "model": self.arch,
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "num_classes": self.num_classes,
            "weights": self.weights,
            "preprocessing": prep,
            "cam": self.supports_cam,
        }


class TorchRunner(Runner):
    """The PyTorch model exactly as ``convnext predict`` runs it (same module, same no-grad forward, same
    autocast), so that the server's probabilities are predict's."""

    backend = "torch"
    supports_cam = True

    def __init__(
        self,
        model: torch.nn.Module,
        arch: str,
        labels: list[str],
        data: DataConfig,
        *,
        device: torch.device | str = "cpu",
        amp_dtype: torch.dtype | None = None,
        weights: str = "",
    ) -> None:
        self.torch_device = torch.device(device)
        self.model = model.eval().to(self.torch_device)
        self.supports_cam = not getattr(model, "exported", False)  # an exported file has no gradients
        self.amp_dtype = amp_dtype
        precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype, "fp32")
        num_classes = int(getattr(model, "num_classes", 0) or len(labels))
        super().__init__(
            arch,
            num_classes,
            labels,
            data,
            precision=precision,
            device=str(self.torch_device),
            weights=weights,
        )
        self._gradcam = None

    def forward(self, x: Tensor) -> Tensor:
        from ..device import autocast

        with torch.no_grad(), autocast(self.torch_device, self.amp_dtype):
            return self.model(x.to(self.torch_device)).float().cpu()

    def cam(self, x: Tensor, classes: Tensor) -> Tensor:
        """(N, S, S) Grad-CAM maps in [0, 1] of ``classes`` (fp32: gradients under autocast are noisier)."""
        from ..inference.cam import GradCAM

        if self._gradcam is None:
            self._gradcam = GradCAM(self.model)
        maps, _ = self._gradcam(x.to(self.torch_device), classes.to(self.torch_device))
        return maps.cpu()


class CallableRunner(Runner):
    """Any backend that maps a float (N, 3, S, S) batch to (N, C) logits: onnxruntime, OpenVINO, ..."""

    def __init__(self, forward: Callable[[Tensor], Any], backend: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._forward, self.backend = forward, backend

    def forward(self, x: Tensor) -> Tensor:
        out = self._forward(x)
        return torch.as_tensor(out).float().cpu()


def resolve_backend(backend: str, weights: str) -> str:
    """``auto``: onnxruntime for .onnx, openvino for .xml, pt2 for .pt2, torch otherwise. ``torch`` with an
    exported file is one sentence (it runs in its own runtime, and has no gradients for Grad-CAM)."""
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r} must be one of {', '.join(BACKENDS)}")
    exported = _BY_SUFFIX.get(Path(str(weights)).suffix.lower())
    if backend == "auto":
        return exported or "torch"
    if backend == "torch" and exported:
        raise UserError(f"--backend torch runs PyTorch weights; {weights} is an exported {exported} file")
    return backend


def load_runner(
    weights: str,
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
    """The runner for what ``convnext predict`` accepts as --weights (tag, file, URL, HF folder, run)."""
    backend = resolve_backend(backend, weights)
    if backend != "torch":
        if amp:
            from ..device import note

            note(f"--amp does not reach into {backend}: {weights} runs as exported")
        return _exported_runner(
            weights, backend, class_names, device=device, img_size=img_size, crop_pct=crop_pct
        )
    from ..device import amp_dtype, resolve_device
    from ..inference.loading import display_names, load_for_inference

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
    labels = display_names(names, loaded.num_classes)
    data = dataclasses.replace(loaded.data)
    return TorchRunner(
        loaded.model, loaded.arch, labels, data, device=dev, amp_dtype=dtype, weights=str(weights)
    )


def check_backend(backend: str, weights: str) -> str:
    """The resolved backend name; fails at once (before a socket opens) when its runtime is missing."""
    name = resolve_backend(backend, weights)
    if name in _RUNTIME:
        from ..inference.backends import require

        require(_RUNTIME[name], f"--backend {name}")
    return name


def _where(b: Any) -> str:
    """The device an exported runner computes on (onnxruntime: its first execution provider)."""
    if getattr(b, "providers", None):
        return "cuda" if b.providers[0] == "CUDAExecutionProvider" else "cpu"
    return str(getattr(b, "device", "cpu")).lower()


def _exported_runner(
    weights: str, backend: str, names: list[str] | None, *, device: str = "cpu", **options: Any
) -> Runner:
    """A file written by ``convnext export``, opened by ``inference.backends.load_backend`` (which checks
    that it is a ``backend`` file and applies ``img_size``/``crop_pct``); its metadata gives the
    architecture, classes and preprocessing."""
    from ..inference.backends import load_backend
    from ..inference.loading import display_names

    b = load_backend(weights, backend, device=device, **options)
    labels = display_names(names or b.class_names, b.num_classes)
    return CallableRunner(
        b.forward,
        b.backend,
        b.arch,
        b.num_classes,
        labels,
        b.data,
        precision=b.precision,
        device=_where(b),
        weights=str(weights),
    )
