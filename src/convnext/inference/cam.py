"""Grad-CAM (Selvaraju et al. 2017): where in the image the evidence for a class is.

Hand-written because neither torch nor torchvision ships Grad-CAM (pytorch-grad-cam is an extra
dependency for ~30 lines). Target layer: the deepest of the model's taps (``feature_info``): the last
stage's output (``model.stages[-1]``, stride 32) of a hierarchical ConvNeXt, the last block (stride 16) of
an isotropic one.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from matplotlib.figure import Figure


MIN_CAM_SIDE = 3  # a coarser map says nothing about where: Grad-CAM of a 1x1 map is one number


def default_target_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Candidate layers, deepest first: the stage outputs of a hierarchical ConvNeXt (strides 32, 16, 8, 4),
    the last block (stride 16) of an isotropic one. ``GradCAM`` uses the deepest whose map is at least
    MIN_CAM_SIDE pixels on its short side for the input at hand: the last stage at 224 px (7x7), an
    earlier one for small inputs (at 32 px the last stage is 1x1 and its CAM would be blank)."""
    model = getattr(model, "module", model)
    info = getattr(model, "feature_info", None)
    if not info or getattr(model, "features_only", False):
        raise ValueError(
            f"{type(model).__name__} names no layers in feature_info (a classifier's); pass the target layer"
        )
    # The model's taps (its feature_info), deepest first, the deepest of each stride: a shallower tap at the
    # same stride gives a map as coarse and less evidence.
    layers, strides = [], set()
    for name, stride in reversed([(f["module"], f["reduction"]) for f in info]):  # timm's list of dicts too
        if stride not in strides:
            strides.add(stride)
            layers.append((re.sub(r"\.(\d+)", r"[\1]", name), model.get_submodule(name)))
    return layers


def default_target_layer(model: nn.Module) -> nn.Module:
    """The deepest candidate layer (the last stage); ``GradCAM`` may pick a shallower one for tiny inputs."""
    return default_target_layers(model)[0][1]


class GradCAM:
    """``GradCAM(model)(x) -> (cams, classes)``: cams (N, H, W) in [0, 1] at the input's resolution.

    For each image: the gradient of the class score (the logit, before softmax) w.r.t. the target layer's
    activations, averaged over space, weights the activation channels; ReLU of the weighted sum, bilinearly
    upsampled to the input, min-max normalized per image (an all-zero map stays zero).

    Without ``target_layer`` the layer follows the input size (see ``default_target_layers``); ``layer``
    names the one the last call used and ``map_size`` its (h, w), which the overlay prints.
    """

    def __init__(self, model: nn.Module, target_layer: nn.Module | None = None) -> None:
        self.model = model
        self.candidates = (
            [("target layer", target_layer)] if target_layer is not None else default_target_layers(model)
        )
        self.layer = self.candidates[0][1]
        self.layer_name = self.candidates[0][0]
        self.map_size: tuple[int, int] | None = None

    def __call__(self, x: Tensor, classes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        acts: dict[int, Tensor] = {}
        handles = [
            m.register_forward_hook(lambda _m, _i, out, k=k: acts.__setitem__(k, out))
            for k, (_, m) in enumerate(self.candidates)
        ]
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                logits = self.model(x)
                if classes is None:
                    classes = logits.argmax(dim=1)
                k = next(
                    (k for k in sorted(acts) if min(acts[k].shape[-2:]) >= MIN_CAM_SIDE),
                    max(acts, key=lambda k: acts[k].shape[-1] * acts[k].shape[-2]),
                )
                score = logits.gather(1, classes.view(-1, 1).to(logits.device)).sum()
                (grad,) = torch.autograd.grad(score, acts[k])
        finally:
            for h in handles:
                h.remove()
            self.model.train(was_training)
        self.layer_name, self.layer = self.candidates[k]
        act = acts[k].detach().float()
        self.map_size = (int(act.shape[-2]), int(act.shape[-1]))
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


# ---------------------------------------------------------------------------------------- the figure
PANEL_MIN = 320  # a smaller image is shown enlarged by a whole factor (pixels stay square) to at least this
PANEL_MAX = 512  # a larger image is shown reduced to this (longer side): the file stays small and quick
_M, _GAP, _HEAD, _CAPTION, _BAR, _BAR_LABELS = 12, 10, 56, 22, 16, 84  # layout, in pixels


def display_scale(height: int, width: int) -> float:
    """How much the figure enlarges (a whole factor, nearest neighbour: a 32 px digit stays sharp) or
    reduces the original image for viewing."""
    short, long = min(height, width), max(height, width)
    if short < PANEL_MIN:
        s = max(1, math.ceil(PANEL_MIN / short))
        while s > 1 and long * s > 2 * PANEL_MAX:  # a thin strip: not wider than two full panels
            s -= 1
        if s > 1:
            return float(s)
    return min(1.0, PANEL_MAX / long)


def cam_filename(stem: str, class_name: str) -> str:
    """``<stem>_cam_<class>.png``; the class is its first name ("tench, Tinca tinca" -> "tench"), made
    safe for any file system."""
    first = class_name.split(",")[0].strip()
    slug = re.sub(r"[^\w\-]+", "_", first).strip("_")[:48] or "class"
    return f"{stem}_cam_{slug}.png"


def cam_figure(
    image: Tensor,
    cam: Tensor,
    box: tuple[float, float, float, float],
    *,
    label: str,
    prob: float,
    title: str = "",
    layer: str = "",
    alpha: float = 0.45,
    top1: tuple[str, float] | None = None,
) -> Figure:
    """The original (left) and the Grad-CAM overlay (right) side by side, a colour bar for the heat map,
    and the predicted class with its probability on top.

    ``image``: uint8 (3, H, W), the ORIGINAL image; ``cam``: the map over the center crop ``box`` the
    model saw (``crop_box``); ``title``: a second line (e.g. the file name); ``layer``: which feature map
    the CAM comes from; ``top1``: (class, probability) of the top-1 when the CAM is of another class
    (``label``, e.g. the true one of a mistake), said beside the title. Images below PANEL_MIN pixels are
    enlarged by a whole factor, above PANEL_MAX
    reduced (``display_scale``); both panels are drawn pixel for pixel (no resampling by matplotlib).
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    _, h, w = image.shape
    s = display_scale(h, w)
    if s > 1:
        k = int(s)
        disp = image.repeat_interleave(k, dim=1).repeat_interleave(k, dim=2)
    elif s < 1:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        disp = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True)[0]
        disp = disp.round().clamp(0, 255).to(torch.uint8)
    else:
        disp = image
    ph, pw = disp.shape[1:]
    sy, sx = ph / h, pw / w
    dbox = (box[0] * sy, box[1] * sx, box[2] * sy, box[3] * sx)
    over = cam_overlay(disp, cam, dbox, alpha=alpha)

    width = _M + pw + _GAP + pw + _GAP + _BAR + _BAR_LABELS
    height = _HEAD + ph + _CAPTION + _M // 2
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")

    def rect(x: float, y_top: float, wd: float, ht: float) -> list[float]:  # pixels -> figure fractions
        return [x / width, 1 - (y_top + ht) / height, wd / width, ht / height]

    top = _HEAD
    ax_img = fig.add_axes(rect(_M, top, pw, ph))
    ax_cam = fig.add_axes(rect(_M + pw + _GAP, top, pw, ph))
    ax_bar = fig.add_axes(rect(_M + 2 * pw + 2 * _GAP, top, _BAR, ph))
    for ax, arr in ((ax_img, disp), (ax_cam, over)):
        ax.imshow(arr.permute(1, 2, 0).numpy(), interpolation="nearest", resample=False)
        ax.set_axis_off()
    if box[0] > 0.5 or box[1] > 0.5 or box[2] < h - 0.5 or box[3] < w - 0.5:  # the crop the model saw
        ax_img.add_patch(
            Rectangle(
                (dbox[1] - 0.5, dbox[0] - 0.5), dbox[3], dbox[2], fill=False, ec="white", lw=1.2, ls="--"
            )
        )
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap=colormaps["jet"]), cax=ax_bar)
    bar.set_ticks([0, 0.5, 1], labels=["0", "0.5", "1 (max)"])
    bar.ax.tick_params(labelsize=8)
    if ph >= 200:
        bar.set_label("Grad-CAM evidence, relative", fontsize=8)

    chars = max(12, int((width - 2 * _M) / 10.5))  # ~10 px per character at 15 pt bold
    p = f" ({prob * 100:.1f}%)"
    kind = "top-1: " if top1 is None else "class: "
    head = f"{kind}{label}{p}"
    if len(head) > chars:
        head = f"{kind}{label[: chars - len(p) - 8].rstrip()}…{p}"
    fig.text(_M / width, 1 - 8 / height, head, fontsize=15, weight="bold", va="top", ha="left")
    if top1 is not None:
        title = f"top-1: {top1[0]} ({top1[1] * 100:.1f}%)" + (f" | {title}" if title else "")
    if title:
        sub = title if len(title) <= int(chars * 1.6) else "…" + title[-int(chars * 1.6) + 1 :]
        fig.text(_M / width, 1 - 34 / height, sub, fontsize=9, color="0.35", va="top", ha="left")
    if s > 1:
        shown = f", shown x{int(s)}"
    elif s < 1:
        shown = f", shown at {s:.0%}"
    else:
        shown = ""
    y_cap = 1 - (top + ph + 4) / height
    fig.text(_M / width, y_cap, f"input {w}x{h} px{shown}", fontsize=8, color="0.3", va="top")
    where = f"{layer}, " if layer else ""
    outside = ", outside the crop dimmed" if ax_img.patches else ""
    of = "top-1 class" if top1 is None else "the class above"
    fig.text(
        (_M + pw + _GAP) / width, y_cap, f"Grad-CAM ({where}{of}{outside})", fontsize=8, color="0.3",
        va="top",
    )  # fmt: skip
    return fig


def write_cam_png(
    path: str | Path, image: Tensor, cam: Tensor, box: tuple[float, float, float, float], **kw: Any
) -> Path:
    """``cam_figure`` written as a PNG, atomically."""
    from ..evaluation.figures import save_figure

    return save_figure(cam_figure(image, cam, box, **kw), path)
