"""PyTorch weights run as they are: fp32, or under bf16/fp16 autocast; Grad-CAM needs these."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..data.config import DataConfig
from ..device import autocast
from .base import Runner


def dtype_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(
        dtype, str(dtype)
    )


class TorchRunner(Runner):
    """A PyTorch model, in fp32 or under bf16/fp16 autocast. ``fuse`` runs ``fuse_for_inference``'s copy
    (fp32, or bf16 with its weights cast once; fp16 runs the model as it is)."""

    def __init__(
        self,
        model: nn.Module,
        data: DataConfig,
        *,
        arch: str = "",
        class_names: list[str] | None = None,
        device: torch.device | str = "cpu",
        amp: torch.dtype | None = None,
        fuse: bool = False,
        source: str = "",
        gradcam: Callable[[nn.Module], Any] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.amp = amp
        model = model.eval().to(self.device)
        # Grad-CAM: ``convnext.inference.cam.GradCAM``, given by the caller (it lives a layer above)
        self.supports_cam = gradcam is not None and not getattr(model, "exported", False)
        self._gradcam_class, self._gradcam = gradcam, None
        fuse = fuse and amp in (None, torch.bfloat16)
        if fuse:
            from ..models import fuse_for_inference

            model = fuse_for_inference(model, dtype=amp)
        self.model = model
        self.data, self.arch, self.class_names, self.source = data, arch, class_names, source
        self.num_classes = int(getattr(model, "num_classes", 0) or 0)
        self.backend = "torch" if amp is None else f"torch-{dtype_name(amp)}"
        self.precision = "fp32" if amp is None else f"{dtype_name(amp)} autocast"
        if fuse:
            self.precision += " (fused)"
            if amp is not None and getattr(model, "compute_dtype", amp) == torch.float32:
                self.precision = "fp32 (fused; this CPU has no native bf16)"

    def forward(self, x: Tensor) -> Tensor:
        with torch.inference_mode(), autocast(self.device, self.amp):
            return self.model(x.to(self.device)).float().to(x.device)

    def cam(self, x: Tensor, classes: Tensor) -> Tensor:
        """(N, S, S) Grad-CAM maps in [0, 1] of ``classes`` (fp32: gradients under autocast are noisier)."""
        if not self.supports_cam:
            return super().cam(x, classes)
        if self._gradcam is None:
            self._gradcam = self._gradcam_class(self.model)
        maps, _ = self._gradcam(x.to(self.device), classes.to(self.device))
        return maps.cpu()


RUNNER = TorchRunner
