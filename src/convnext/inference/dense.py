"""Prediction with the dense models: boxes, labels, scores and masks from ``maskrcnn_`` and
``fasterrcnn_<backbone>`` (torchvision's detectors) and per-pixel classes from ``upernet_<backbone>``, for
``convnext predict`` and ``convnext serve``.

Detection runs torchvision's own pre- and post-processing (``GeneralizedRCNNTransform``: resize to
``min_size``, normalise; boxes and masks mapped back to the original image), so boxes are pixel xyxy of the
file as read; masks go out as COCO RLE (pycocotools' ``mask.encode``) and are drawn with torchvision's
``draw_bounding_boxes`` / ``draw_segmentation_masks``. Segmentation resizes as mmseg's ADE20K test pipeline
(keep the aspect ratio within ``4S x S``, ``S`` = ``--img-size``, default 512), normalises with the ImageNet
mean/std (mmseg's), and resizes the logits back to the original size before the argmax. An exported UperNet
with a fixed input size gets the image resized to that square instead. Names: the checkpoint's, else COCO's
(torchvision's list) for a 91-label detector and ADE20K's (``data/ade20k_classes.txt``, mmseg's names and
palette) for a 150-class segmenter, else "class N".
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.config import DataConfig
from ..errors import UserError
from ..runtimes import exported_arch, is_exported
from ..runtimes.base import Runner

SEGMENTATION, DETECTION = "segmentation", "detection"
_PREFIXES = {"upernet_": SEGMENTATION, "maskrcnn_": DETECTION, "fasterrcnn_": DETECTION}
DEFAULT_SEG_SIZE = 512  # the short side of mmseg's ADE20K test scale (2048, 512)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_ADE20K = Path(__file__).resolve().parents[1] / "data" / "ade20k_classes.txt"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

__all__ = [
    "DETECTION",
    "SEGMENTATION",
    "DenseModel",
    "DensePrediction",
    "DenseRunner",
    "ade20k_classes",
    "dense_task",
    "load_dense",
    "predict_dense",
    "task_of_arch",
]


def task_of_arch(arch: str | None) -> str | None:
    """``segmentation`` (``upernet_*``), ``detection`` (``maskrcnn_*``, ``fasterrcnn_*``) or None."""
    for prefix, task in _PREFIXES.items():
        if arch and arch.startswith(prefix):
            return task
    return None


def ade20k_classes() -> tuple[list[str], list[tuple[int, int, int]]]:
    """ADE20K's 150 class names and mmseg's palette, in class order."""
    names, palette = [], []
    for line in _ADE20K.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, rgb = line.split("\t")
            names.append(name)
            palette.append(tuple(int(c) for c in rgb.split(",")))
    return names, palette  # type: ignore[return-value]


def coco_names() -> list[str]:
    """torchvision's 91 COCO labels (category ids; ``__background__`` and "N/A" for the unused ids)."""
    from torchvision.models._meta import _COCO_CATEGORIES

    return list(_COCO_CATEGORIES)


def class_names_for(task: str, num_classes: int, names: list[str] | None) -> list[str]:
    """What each label is called: the checkpoint's names, else COCO's / ADE20K's by count, else "class N"."""
    if names and len(names) == num_classes:
        return [str(n) for n in names]
    if task == DETECTION and num_classes == 91:
        return coco_names()
    if task == SEGMENTATION and num_classes == 150:
        return ade20k_classes()[0]
    return [f"class {i}" for i in range(num_classes)]


def palette_for(num_classes: int) -> list[tuple[int, int, int]]:
    """ADE20K's palette for 150 classes, else distinct colours (golden-angle hues), the same every run."""
    if num_classes == 150:
        return ade20k_classes()[1]
    import colorsys

    out = []
    for i in range(num_classes):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65 + 0.35 * (i % 2), 0.95)
        out.append((round(r * 255), round(g * 255), round(b * 255)))
    return out


# ------------------------------------------------------------------------------------------------ loading
def _peek_keys(path: Path) -> dict[str, Any] | None:
    """The tensor names of a checkpoint file, read without loading it (safetensors' header; torch's zip
    through mmap with ``weights_only``), or None when it cannot be told cheaply."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                return dict.fromkeys(f.keys())
        from ..weights.files import check_archive

        check_archive(path)  # the zip directory checked before anything inflates, as every read does
        obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # the reader that loads it says what is wrong
        return None
    for key in ("state_dict", "model", "module", "model_ema", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        return None
    return {str(k).removeprefix("module."): None for k in obj}


def _run_model(run_dir: Path) -> tuple[str | None, dict[str, Any]]:
    """A training run's model name and constructor options (its config.yaml)."""
    from ..recipe import read_yaml

    try:
        cfg = read_yaml(run_dir / "config.yaml")
    except Exception:
        return None, {}
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(model, dict) or not model.get("name"):
        return None, {}
    options = model.get("options") if isinstance(model.get("options"), dict) else {}
    return str(model["name"]).partition(".")[0], dict(options)


def _run_arch(run_dir: Path) -> str | None:
    return _run_model(run_dir)[0]


def run_data(run_dir: Path) -> DataConfig:
    """A training run's data settings (its config.yaml's ``data``; defaults where it says nothing): its
    dataset and its test scale."""
    from ..recipe import read_yaml
    from ..runtimes.base import data_from_dict

    raw = read_yaml(run_dir / "config.yaml")
    data = raw.get("data") if isinstance(raw, dict) else None
    return data_from_dict(data if isinstance(data, dict) else None)


def dense_task(weights: str | None, model_name: str | None) -> str | None:
    """``segmentation`` or ``detection`` when ``--model`` or the weights are a dense model's (model name,
    training run's recipe, exported file's metadata, a checkpoint's tensor names, a Hub repo's config), else
    None: a classifier. Cheap: no weights are loaded (a Hub repo is fetched into the cache, as loading
    would be)."""
    if model_name:
        return task_of_arch(model_name.partition(".")[0])
    if not weights:
        return None
    if is_exported(weights):
        return task_of_arch(exported_arch(weights))
    from ..weights.detection import is_detection
    from ..weights.fetch import is_run_dir
    from ..weights.hf_hub import download, is_hub
    from ..weights.upernet import is_upernet

    p = download(str(weights)) if is_hub(weights) else Path(str(weights)).expanduser()  # a Hub repo: a folder
    if p.is_dir():
        if is_run_dir(p):
            return task_of_arch(_run_arch(p))
        cfg = p / "config.json"
        if cfg.is_file():
            try:
                doc = json.loads(cfg.read_text(encoding="utf-8"))
            except ValueError:
                return None
            return SEGMENTATION if doc.get("model_type") == "upernet" else None
        return None
    if not p.is_file():
        return None
    keys = _peek_keys(p)
    if keys is None:
        return None
    return SEGMENTATION if is_upernet(keys) else DETECTION if is_detection(keys) else None


@dataclass
class DenseModel:
    """A dense model ready to predict: PyTorch (``model``) or an exported UperNet (``runner``)."""

    task: str
    arch: str
    num_classes: int
    names: list[str]  # display name of every label (detection: label 0 is the background)
    palette: list[tuple[int, int, int]]
    source: str
    img_size: int  # segmentation: the short side; detection: torchvision's min_size
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    model: nn.Module | None = None
    runner: Any = None  # an exported file's runtimes.base.Runner
    fixed_size: int | None = None  # an exported graph's only H = W
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def backend(self) -> str:
        return self.runner.backend if self.runner is not None else "torch"

    @property
    def precision(self) -> str:
        return self.runner.precision if self.runner is not None else "fp32"


def load_dense(
    weights: str | None,
    model_name: str | None = None,
    *,
    img_size: int | None = None,
    device: torch.device | str = "cpu",
    ema: bool | None = None,
) -> DenseModel:
    """Build and load a dense model from anything ``--weights`` takes (``create_model``'s sources, a run
    folder, an exported UperNet); no weights and a ``--model`` name: random weights, for a try-out.
    ``ema`` (a training run's checkpoint only): its EMA weights; None: those its best was ranked by."""
    from ..messages import note

    device = torch.device(device)
    if weights and is_exported(weights):
        if ema:
            raise UserError(f"--ema: {weights} is an exported model (it holds one set of weights)")
        from ..runtimes.base import open_exported

        runner = open_exported(str(weights), device=str(device))
        task = task_of_arch(runner.arch)
        if task is None:
            raise UserError(f"{weights} is not an exported detection or segmentation model ({runner.arch})")
        fixed = runner.fixed_size
        if img_size is not None and fixed is not None and int(img_size) != fixed:
            raise UserError(
                f"{weights} was exported for {fixed} px inputs; re-export it with --img-size {img_size}"
            )
        d = runner.data
        n = runner.num_classes
        return DenseModel(
            task, runner.arch, n, class_names_for(task, n, runner.class_names), palette_for(n), str(weights),
            int(img_size or d.img_size), tuple(d.mean), tuple(d.std), runner=runner, fixed_size=fixed,
            device=device,
        )  # fmt: skip
    from ..hub import create_model

    arch = model_name.partition(".")[0] if model_name else None
    src: str | dict | None = weights
    shown, options, run_names = str(weights or arch), {}, None
    trained_on: DataConfig | None = None  # a run's data: its test scale and normalisation are the default
    p = Path(str(weights)).expanduser() if weights else None
    from ..weights.fetch import is_run_dir, run_checkpoint

    if p is not None and p.is_dir() and is_run_dir(p):  # a training run: its recipe's model, its checkpoint
        from ..weights.files import read_file

        held, options = _run_model(p)
        arch = arch or held
        trained_on = run_data(p)
        ckpt = run_checkpoint(p)
        src, _ = read_file(ckpt)  # read once; the task's reader unwraps it in memory
        shown = str(ckpt)
        run_names = src.get("class_names") if isinstance(src, dict) else None
        from ..weights.containers import unwrap

        src, held_ema = unwrap(src, shown, ema=ema)  # the model's or the EMA's weights, as asked
        shown += ", EMA" if held_ema["ema"] else ""
    elif ema:
        raise UserError(f"--ema: {weights} is not a training run (it holds one set of weights)")
    elif arch is None and weights:
        arch = _arch_of(str(weights))
    task = task_of_arch(arch)
    if task is None:
        raise UserError(f"{arch or weights} is not a detection or segmentation model")
    if src is None:
        note(f"no --weights: {arch} has random weights (its predictions mean nothing)")
    try:
        model = create_model(arch, pretrained=src, **options)
    except (TypeError, ValueError) as e:
        raise UserError(f"cannot build {arch} from {shown} ({e})") from None
    model.eval().to(device)
    info = getattr(model, "pretrained_info", None)
    n = int(getattr(model, "num_classes", 0) or model.roi_heads.box_predictor.cls_score.out_features)
    names = class_names_for(task, n, getattr(info, "class_names", None) or run_names)
    if task == DETECTION:
        t = model.transform
        if img_size is not None:
            t.min_size, t.max_size = (int(img_size),), int(round(img_size * 1333 / 800))
        size, mean, std = int(t.min_size[-1]), tuple(t.image_mean), tuple(t.image_std)
    elif trained_on is not None:  # the run's test scale (mmseg's short side of data.seg_scale)
        size = int(img_size or min(trained_on.seg_scale))
        mean, std = tuple(trained_on.mean), tuple(trained_on.std)
    else:
        size, mean, std = int(img_size or DEFAULT_SEG_SIZE), IMAGENET_MEAN, IMAGENET_STD
    if size < model.reduction:
        raise UserError(f"--img-size {size} is below the {model.reduction} px {arch} needs")
    read = getattr(info, "path", None)
    if isinstance(read, str) and read != "<state dict>":  # the file the reader resolved (URL, HF folder)
        shown = read
    return DenseModel(
        task, arch, n, names, palette_for(n), shown, size, mean, std, model=model, device=device
    )  # fmt: skip


def _arch_of(src: str) -> str:
    """The dense architecture a checkpoint holds, from its backbone's shapes (and, for a detector, whether
    it has a mask head)."""
    from ..weights.detection import prepare_detection
    from ..weights.upernet import prepare_upernet

    task = dense_task(src, None)
    if task == SEGMENTATION:
        arch = prepare_upernet(src).info.arch
    elif task == DETECTION:
        prepared = prepare_detection(src)
        kind = (
            "maskrcnn" if any(k.startswith("roi_heads.mask_") for k in prepared.state_dict) else "fasterrcnn"
        )
        arch = f"{kind}_{prepared.info.arch}" if prepared.info.arch else None
    else:
        arch = None
    if arch:
        return arch
    raise UserError(
        f"cannot tell the architecture of {src}; pass --model (e.g. --model upernet_convnext_tiny or "
        "--model maskrcnn_convnext_tiny)"
    )


# ------------------------------------------------------------------------------------------------ running
@dataclass
class Detection:
    box: list[float]  # pixel x1, y1, x2, y2 of the original image
    label: int
    name: str
    score: float
    mask: Tensor | None = None  # bool (H, W), Mask R-CNN


@dataclass
class DensePrediction:
    path: str
    task: str
    size: tuple[int, int] = (0, 0)  # the original image's (H, W)
    detections: list[Detection] = field(default_factory=list)
    label_map: Tensor | None = None  # segmentation: (H, W) int64 class per pixel
    fractions: list[tuple[int, str, float]] = field(
        default_factory=list
    )  # (class, name, share), largest first
    files: dict[str, str] = field(default_factory=dict)  # what was written: kind -> path
    error: str | None = None


def seg_input(img: Tensor, dense: DenseModel) -> Tensor:
    """One uint8 (3, H, W) image as the segmenter's (1, 3, h, w) float input: mmseg's keep-ratio resize to
    fit ``4S x S`` (or the exported graph's fixed square), ImageNet normalisation."""
    from torchvision.transforms.v2.functional import resize

    h, w = img.shape[1:]
    if dense.fixed_size is not None:
        size = [dense.fixed_size, dense.fixed_size]
    else:
        s = dense.img_size
        scale = min(4 * s / max(h, w), s / min(h, w))
        size = [max(1, round(h * scale)), max(1, round(w * scale))]
    x = resize(img, size, antialias=True).float().div(255)
    mean = torch.tensor(dense.mean).view(3, 1, 1)
    std = torch.tensor(dense.std).view(3, 1, 1)
    return ((x - mean) / std)[None]


def segment(dense: DenseModel, img: Tensor) -> Tensor:
    """(H, W) int64 class per pixel of the uint8 image, from logits resized to it (bilinear)."""
    x = seg_input(img, dense)
    with torch.inference_mode():
        if dense.runner is not None:
            logits = dense.runner.forward(x)
        else:
            logits = dense.model(x.to(dense.device)).float().cpu()
    logits = F.interpolate(logits, size=tuple(img.shape[1:]), mode="bilinear", align_corners=False)
    return logits[0].argmax(0)


class ExportedSegmenter(nn.Module):
    """An exported UperNet (fixed square input) as a module of any input size, for the evaluation loop: the
    normalised batch resized to the graph's square (bilinear), its logits resized back. An image already at
    the square (the export's own test scale) goes through untouched."""

    def __init__(self, runner: Any, size: int) -> None:
        super().__init__()
        self.runner, self.size = runner, int(size)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        square = (h, w) == (self.size, self.size)
        if not square:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        logits = self.runner.forward(x.float().cpu())
        if not square:
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return logits


def detect(dense: DenseModel, img: Tensor, threshold: float) -> list[Detection]:
    """Detections scoring at least ``threshold``, best first, in the image's pixels."""
    with torch.inference_mode():
        if dense.runner is not None:  # an exported detector: one image in, torchvision's dict out
            out = dense.runner.detect(img.float().div(255))
        else:
            out = dense.model([img.float().div(255).to(dense.device)])[0]
    keep = out["scores"] >= threshold
    boxes, labels, scores = out["boxes"][keep].cpu(), out["labels"][keep].cpu(), out["scores"][keep].cpu()
    masks = out["masks"][keep][:, 0].cpu() > 0.5 if "masks" in out else None
    return [
        Detection(
            [round(float(v), 2) for v in boxes[i]],
            int(labels[i]),
            dense.names[int(labels[i])] if int(labels[i]) < len(dense.names) else f"class {int(labels[i])}",
            float(scores[i]),
            None if masks is None else masks[i],
        )
        for i in range(len(scores))
    ]


def fractions_of(label_map: Tensor, names: list[str]) -> list[tuple[int, str, float]]:
    counts = torch.bincount(label_map.flatten(), minlength=len(names))
    total = max(1, label_map.numel())
    return [
        (int(c), names[c], float(counts[c]) / total)
        for c in counts.argsort(descending=True, stable=True)
        if counts[c] > 0
    ]


def rle(mask: Tensor) -> dict[str, Any]:
    """A bool (H, W) mask as COCO RLE (pycocotools), ``counts`` as text (JSON)."""
    import numpy as np
    from pycocotools import mask as mask_utils

    enc = mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
    return {"size": [int(s) for s in enc["size"]], "counts": enc["counts"].decode("ascii")}


def detection_json(dets: list[Detection]) -> list[dict[str, Any]]:
    out = []
    for d in dets:
        obj: dict[str, Any] = {"box": d.box, "label": d.label, "name": d.name, "score": round(d.score, 6)}
        if d.mask is not None:
            obj["mask"] = rle(d.mask)
        out.append(obj)
    return out


def segmentation_json(fractions: list[tuple[int, str, float]]) -> list[dict[str, Any]]:
    return [{"index": c, "name": n, "fraction": round(f, 6)} for c, n, f in fractions]


def prediction_json(pred: DensePrediction) -> dict[str, Any]:
    """One image's ``--json`` object (``convnext predict``)."""
    if pred.error is not None:
        return {"path": pred.path, "error": pred.error}
    obj: dict[str, Any] = {"path": pred.path, "task": pred.task, "size": list(pred.size)}
    if pred.task == DETECTION:
        obj["detections"] = detection_json(pred.detections)
    else:
        obj["classes"] = segmentation_json(pred.fractions)
    if pred.files:
        obj["files"] = dict(pred.files)
    return obj


# ------------------------------------------------------------------------------------------------ drawing
def draw_detections(img: Tensor, dets: list[Detection], palette: list[tuple[int, int, int]]) -> Tensor:
    """The image with masks (alpha 0.5) and labelled boxes drawn by torchvision, uint8 (3, H, W); an image
    under 320 px is enlarged by a whole factor first."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    k = -(-320 // max(img.shape[1:])) if max(img.shape[1:]) < 320 else 1  # small images: enlarged k times,
    if k > 1:  # as predict's Grad-CAM figures are, so that the labels can be read
        img = img.repeat_interleave(k, 1).repeat_interleave(k, 2)
    if not dets:
        return img
    colors = [palette[d.label % len(palette)] for d in dets]
    masks = [d.mask.repeat_interleave(k, 0).repeat_interleave(k, 1) for d in dets if d.mask is not None]
    if masks:
        mcolors = [c for c, d in zip(colors, dets) if d.mask is not None]
        img = draw_segmentation_masks(img, torch.stack(masks), alpha=0.5, colors=mcolors)
    boxes = torch.tensor([d.box for d in dets], dtype=torch.float32) * k
    side = max(img.shape[1:])
    labels = [f"{d.name} {d.score:.2f}" for d in dets]
    from matplotlib import font_manager  # a TrueType font that scales (PIL's default bitmap one does not)

    font = font_manager.findfont("DejaVu Sans")
    return draw_bounding_boxes(
        img, boxes, labels=labels, colors=colors, width=max(2, round(side / 250)), font=font,
        font_size=max(10, round(side / 40)), fill_labels=True,
    )  # fmt: skip


def colour_mask(label_map: Tensor, palette: list[tuple[int, int, int]]) -> Tensor:
    """(H, W) classes -> uint8 (3, H, W) colours."""
    table = torch.tensor(palette, dtype=torch.uint8)
    return table[label_map.clamp(0, len(palette) - 1)].permute(2, 0, 1)


def legend_figure(picture: Tensor, pred: DensePrediction, palette: list, title: str, most: int = 20) -> Any:
    """A matplotlib figure: the picture, and a legend of the classes on it (largest share first)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    h, w = picture.shape[1:]
    scale = 6.0 / max(h, w)
    fig = Figure(figsize=(w * scale + 3.2, max(h * scale, 2.5) + 0.5), dpi=100)
    ax = fig.add_axes((0.02, 0.02, (w * scale) / (w * scale + 3.2) - 0.02, 0.9))
    ax.imshow(picture.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    shown = pred.fractions[:most]
    handles = [
        Patch(facecolor=[c / 255 for c in palette[i % len(palette)]], edgecolor="black", linewidth=0.3,
              label=f"{name} {100 * f:.1f}%")
        for i, name, f in shown
    ]  # fmt: skip
    if len(pred.fractions) > most:
        rest = sum(f for _, _, f in pred.fractions[most:])
        handles.append(Patch(facecolor="white", label=f"{len(pred.fractions) - most} more {100 * rest:.1f}%"))
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    return fig


def write_png(path: Path, img: Tensor) -> None:
    from torchvision.io import write_png as tv_write_png

    path.parent.mkdir(parents=True, exist_ok=True)
    tv_write_png(img.contiguous(), str(path), compression_level=1)


def label_map_png(label_map: Tensor) -> bytes:
    """The class per pixel as a PNG: 8-bit grey (up to 256 classes), else 16-bit."""
    from PIL import Image

    arr = label_map.numpy()
    img = (
        Image.fromarray(arr.astype("uint8"), "L")
        if arr.max(initial=0) < 256
        else Image.fromarray(arr.astype("uint16"))
    )
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def label_map_b64(label_map: Tensor) -> str:
    return base64.b64encode(label_map_png(label_map)).decode("ascii")


def _stem(path: str, used: set[str]) -> str:
    stem = _UNSAFE.sub("_", _CONTROL.sub("_", Path(path).stem)) or "image"
    name, j = stem, 1
    while name in used:  # the same file name in two folders
        name, j = f"{stem}_{j}", j + 1
    used.add(name)
    return name


def write_figures(
    pred: DensePrediction, img: Tensor, dense: DenseModel, out: Path, stem: str, label_map: bool
) -> None:
    """Detection: ``<stem>_detections.png``; segmentation: ``<stem>_overlay.png`` (the image under the
    coloured classes, legend beside) and ``<stem>_mask.png`` (the classes alone), and with ``label_map``
    ``<stem>_labels.png`` (the class index per pixel)."""
    from ..evaluation.figures import save_figure

    if pred.task == DETECTION:
        path = out / f"{stem}_detections.png"
        write_png(path, draw_detections(img, pred.detections, dense.palette))
        pred.files["detections"] = str(path)
        return
    assert pred.label_map is not None
    colours = colour_mask(pred.label_map, dense.palette)
    blended = (img.float() * 0.5 + colours.float() * 0.5).round().to(torch.uint8)
    title = pred.path if pred.path.isprintable() else repr(pred.path)
    for kind, picture in (("overlay", blended), ("mask", colours)):
        path = out / f"{stem}_{kind}.png"
        save_figure(legend_figure(picture, pred, dense.palette, title), path)
        pred.files[kind] = str(path)
    if label_map:
        path = out / f"{stem}_labels.png"
        path.write_bytes(label_map_png(pred.label_map))
        pred.files["labels"] = str(path)


def predict_dense(
    dense: DenseModel,
    paths: list[str],
    *,
    out_dir: str | Path | None = None,
    score_threshold: float = 0.5,
    label_map: bool = False,
    max_pixels: int | None = None,
    progress: bool = False,
) -> Iterator[DensePrediction]:
    """One :class:`DensePrediction` per path, in order, one image at a time (their sizes differ); an
    unreadable file yields its error and the rest go on. With ``out_dir`` the figures are written there."""
    from tqdm import tqdm

    from ..data.images import ImageError, load_image

    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
    for p in tqdm(paths, unit="img", desc="predict", disable=not progress, leave=False):
        try:
            img = load_image(p, **kwargs)
        except ImageError as e:
            yield DensePrediction(p, dense.task, error=f"cannot read image ({e.why})")
            continue
        pred = DensePrediction(p, dense.task, (int(img.shape[1]), int(img.shape[2])))
        if dense.task == DETECTION:
            pred.detections = detect(dense, img, score_threshold)
        else:
            pred.label_map = segment(dense, img)
            pred.fractions = fractions_of(pred.label_map, dense.names)
        if out is not None:
            write_figures(pred, img, dense, out, _stem(p, used), label_map)
        yield pred


def prediction_lines(pred: DensePrediction, most: int = 20) -> list[str]:
    """The text ``convnext predict`` prints for one image."""
    from .report import shown_path

    if pred.error is not None:
        return [f"{shown_path(pred.path)}: error: {pred.error}"]
    lines = [shown_path(pred.path)]
    if pred.task == DETECTION:
        if not pred.detections:
            lines.append("(no detection above the score threshold)")
        for d in pred.detections[:most]:
            box = ", ".join(f"{v:.1f}" for v in d.box)
            extra = f", mask {int(d.mask.sum())} px" if d.mask is not None else ""
            lines.append(f"{d.name:<30} {d.score:.3f}  [{box}]{extra}")
        if len(pred.detections) > most:
            lines.append(f"... {len(pred.detections) - most} more (--json has them all)")
    else:
        for _, name, f in pred.fractions[:most]:
            lines.append(f"{name:<30} {100 * f:6.2f}% of the pixels")
        if len(pred.fractions) > most:
            lines.append(f"... {len(pred.fractions) - most} more classes (--json has them all)")
    for kind, path in pred.files.items():
        lines.append(f"{kind}: {shown_path(path)}")
    return lines


def loaded_for_export(weights: str | None, model_name: str | None, img_size: int | None) -> Any:
    """A dense model as ``export`` takes a classifier (``inference.loading.Loaded``): the segmenter is
    exported at ``img_size`` square (default 512), the detector with torchvision's ``min_size`` (its graph
    takes any H x W and resizes itself)."""
    from ..weights.load import CheckpointInfo
    from .loading import Loaded

    if weights and is_exported(weights):
        raise UserError(f"{weights} is already an exported file; export from PyTorch weights or a run folder")
    dense = load_dense(weights, model_name, img_size=img_size)
    if getattr(dense.model, "auxiliary_head", None) is not None:
        dense.model.auxiliary_head = None  # training's second loss: no part of the exported function
    info = getattr(dense.model, "pretrained_info", None) or CheckpointInfo(
        source=dense.source, path=dense.source, format="random", num_classes=dense.num_classes
    )
    run_dir = None
    if weights and Path(str(weights)).expanduser().is_dir():
        from ..weights.fetch import is_run_dir

        run_dir = Path(str(weights)).expanduser() if is_run_dir(Path(str(weights)).expanduser()) else None
    data = run_data(run_dir) if run_dir is not None else DataConfig()  # int8 calibrates on a run's data
    data.img_size, data.crop_pct, data.mean, data.std = dense.img_size, 1.0, dense.mean, dense.std
    data.interpolation = "bilinear"  # what seg_input resizes with (mmseg's), and torchvision's detectors
    names = info.class_names if info.class_names and len(info.class_names) == dense.num_classes else None
    return Loaded(dense.model, dense.arch, dense.num_classes, names, data, dense.source, run_dir, info)


class DenseRunner(Runner):
    """A dense model as ``convnext serve`` runs it: one image per request (their sizes differ), answered
    with :meth:`answer`; ``forward`` only warms the model up. ``task`` tells the server and its page what
    the answer holds."""

    supports_cam = False

    def __init__(self, dense: DenseModel) -> None:
        self.dense, self.task = dense, dense.task
        self.backend, self.arch, self.num_classes = dense.backend, dense.arch, dense.num_classes
        self.precision, self.source, self.labels = dense.precision, dense.source, list(dense.names)
        self.class_names = list(dense.names)
        self.data = DataConfig()
        self.data.img_size, self.data.crop_pct = dense.img_size, 1.0
        self.data.mean, self.data.std = dense.mean, dense.std
        self.data.interpolation = "bilinear"  # seg_input's and torchvision's detectors' resize

    def preprocess(self, img: Tensor) -> Tensor:
        return img

    def forward(self, x: Tensor) -> Tensor:
        """A warm-up pass on a (N, 3, H, W) batch (zeros at start): each image once."""
        for img in x:
            img = img.clamp(0, 255).to(torch.uint8)
            if self.task == DETECTION:
                detect(self.dense, img, 1.0)
            else:
                segment(self.dense, img)
        return x

    def answer(self, img: Tensor, score_threshold: float = 0.5) -> dict[str, Any]:
        """The API's answer for one uint8 image: detections (boxes, labels, names, scores, RLE masks) or
        the class shares and the label map as a base64 PNG."""
        out: dict[str, Any] = {"model": self.arch, "task": self.task, "size": [int(s) for s in img.shape[1:]]}
        if self.task == DETECTION:
            out["detections"] = detection_json(detect(self.dense, img, score_threshold))
        else:
            label_map = segment(self.dense, img)
            out["classes"] = segmentation_json(fractions_of(label_map, self.dense.names))
            out["label_map"] = label_map_b64(label_map)
        return out

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["task"] = self.task
        info["palette"] = [list(c) for c in self.dense.palette]
        return info
