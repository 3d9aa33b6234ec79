"""Grad-CAM (Selvaraju et al. 2017): where in the image the evidence for a class is.

Hand-written because neither torch nor torchvision ships Grad-CAM (pytorch-grad-cam is an extra
dependency for ~30 lines). Target layer: the last stage's output (``model.stages[-1]``, stride 32) of a
hierarchical ConvNeXt, the block stack (``model.blocks``, stride 16) of an isotropic one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def default_target_layer(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)
    if hasattr(model, "stages"):
        return model.stages[-1]
    if hasattr(model, "blocks"):
        return model.blocks
    raise ValueError(f"{type(model).__name__} has neither .stages nor .blocks; pass the target layer")


class GradCAM:
    """``GradCAM(model)(x) -> (cams, classes)``: cams (N, H, W) in [0, 1] at the input's resolution.

    For each image: the gradient of the class score (the logit, before softmax) w.r.t. the target layer's
    activations, averaged over space, weights the activation channels; ReLU of the weighted sum, bilinearly
    upsampled to the input, min-max normalized per image (an all-zero map stays zero).
    """

    def __init__(self, model: nn.Module, target_layer: nn.Module | None = None) -> None:
        self.model = model
        self.layer = target_layer if target_layer is not None else default_target_layer(model)

    def __call__(self, x: Tensor, classes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        acts: list[Tensor] = []
        handle = self.layer.register_forward_hook(lambda _m, _i, out: acts.append(out))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                logits = self.model(x)
                if classes is None:
                    classes = logits.argmax(dim=1)
                score = logits.gather(1, classes.view(-1, 1).to(logits.device)).sum()
                (grad,) = torch.autograd.grad(score, acts[-1])
        finally:
            handle.remove()
            self.model.train(was_training)
        act = acts[-1].detach().float()
        weights = grad.float().mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * act).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        flat = cam.flatten(1)
        lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
        span = (hi - lo).clamp_min(1e-12)
        cam = torch.where((hi > lo)[:, None, None], (cam - lo[:, None, None]) / span[:, None, None], 0.0)
        return cam.clamp_(0, 1), classes.detach().cpu()


def crop_box(
    height: int, width: int, img_size: int, crop_pct: float, crop_mode: str = "center"
) -> tuple[float, float, float, float]:
    """(top, left, h, w) in ORIGINAL pixels of the crop the eval transform feeds the model, as torchvision
    computes it: "center" resizes the shorter side to floor(img_size / crop_pct) and centre-crops img_size;
    "squash" resizes the whole image to that square (the whole image when crop_pct is 1)."""
    from ..data.transforms import eval_resize_size

    r = eval_resize_size(img_size, crop_pct)
    if crop_mode == "squash":
        rh = rw = r
    else:
        short, long = (height, width) if height <= width else (width, height)
        rl = int(r * long / short)
        rh, rw = (r, rl) if height <= width else (rl, r)
    top, left = int(round((rh - img_size) / 2.0)), int(round((rw - img_size) / 2.0))
    sy, sx = height / rh, width / rw
    return top * sy, left * sx, img_size * sy, img_size * sx


def cam_overlay(
    image: Tensor, cam: Tensor, box: tuple[float, float, float, float], alpha: float = 0.45
) -> Tensor:
    """The heat map (jet colormap) blended over the ORIGINAL image (uint8 (3, H, W), same size out).

    The CAM covers the center crop the model saw (``box``); outside it the image is shown dimmed, so that
    nobody reads "no evidence" where the model simply did not look.
    """
    from matplotlib import colormaps

    _, h, w = image.shape
    top, left, bh, bw = box
    y0, x0 = max(int(math.floor(top)), 0), max(int(math.floor(left)), 0)
    y1, x1 = min(int(math.ceil(top + bh)), h), min(int(math.ceil(left + bw)), w)
    heat = F.interpolate(cam[None, None].float(), size=(y1 - y0, x1 - x0), mode="bilinear")[0, 0]
    lut = torch.from_numpy(colormaps["jet"](torch.linspace(0, 1, 256).numpy())[:, :3]).float()
    colored = lut[(heat.clamp(0, 1) * 255).round().long()].permute(2, 0, 1)  # (3, h, w) in [0, 1]
    img = image.float() / 255
    out = img * 0.5  # dimmed outside the crop
    region = img[:, y0:y1, x0:x1]
    out[:, y0:y1, x0:x1] = (1 - alpha) * region + alpha * colored
    return (out * 255).round().clamp(0, 255).to(torch.uint8)
