"""What every runtime shares: the runner interface, the metadata an exported file carries, and the checks a
written file passes before it is kept.

A :class:`Runner` is what ``predict``, ``evaluate``, ``benchmark``, ``serve`` and export's verification
need and nothing more::

    runner = open_runner("model.onnx")  # convnext.inference.backends: also .xml, .pt2, a checkpoint, ...
    x = torch.stack([runner.preprocess(img) for img in images])  # the model's own eval transform
    logits = runner.forward(x)  # float NCHW in, (N, classes) float32 out on x's device
    runner.cam(x, classes)  # Grad-CAM maps (PyTorch weights only)
    runner.describe()  # model, backend, precision, device, preprocessing

``runner.precision`` is what the backend really computes in (OpenVINO picks bf16 on CPUs with bf16 units
unless told otherwise; we tell it), never just what was asked for.

Exported files carry our metadata (architecture, class names, preprocessing, dataset settings) as one JSON
document under the key ``convnext``: ONNX ``metadata_props``, OpenVINO ``rt_info``, pt2 ``extra_files``
(``convnext.json``). A file exported by another tool runs too, with ImageNet preprocessing assumed and a note.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.config import DataConfig
from ..data.preprocessing import Preprocessing
from ..errors import UserError
from ..messages import note

META_KEY = "convnext"  # ONNX metadata_props key, OpenVINO rt_info key; pt2 extra file META_KEY + ".json"
META_VERSION = 1
INPUT_NAME, OUTPUT_NAME = "input", "logits"
DETECTION_OUTPUTS = ("boxes", "labels", "scores", "masks")  # an exported torchvision detector's outputs
DETECTION_RTOL = (
    1e-4  # max |box difference| / the image's longer side; scores and mask probabilities: absolute
)
PARITY_RTOL = 1e-5  # max |exported - pytorch| / max |pytorch logits|
TRACE_BATCH = 2
VERIFY_BATCHES = (1, 3)

# The run's dataset settings, spelled out in the metadata (the whole data section is stored too).
DATASET_KEYS = ("dataset", "root", "train_split", "val_split", "class_list", "val_fraction", "split_seed")


def relative_diff(out: Tensor, ref: Tensor) -> float:
    """max |out - ref| / max |ref|: the parity measure of exported files (elementwise relative error is
    meaningless for logits near zero)."""
    out, ref = out.detach().float().cpu(), ref.detach().float().cpu()
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


# ---------------------------------------------------------------------------------------------- metadata


def data_to_dict(data: DataConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(data).items()}


def data_from_dict(raw: dict[str, Any] | None) -> DataConfig:
    """A DataConfig from stored keys; keys this version does not know are ignored (newer exporters)."""
    data = DataConfig()
    for f in dataclasses.fields(DataConfig):
        if raw and f.name in raw:
            v = raw[f.name]
            setattr(data, f.name, tuple(v) if isinstance(v, list) else v)
    return data


@dataclass
class ExportMeta:
    """What an exported file says about itself (stored as JSON inside it)."""

    arch: str
    num_classes: int
    class_names: list[str] | None
    data: DataConfig  # eval preprocessing and, for a training run, its dataset settings
    format: str = ""  # onnx | openvino | pt2
    precision: str = "fp32"  # fp32 | bf16 | int8 (what was exported)
    inference_precision: str | None = None  # OpenVINO: the precision hint its runner sets (fp32 | bf16)
    model_options: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the weights it was exported from
    run_dir: str | None = None  # the training run folder, when it came from one
    has_dataset: bool = False  # ``data`` holds a training run's dataset settings (else preprocessing only)
    extra: dict[str, Any] = field(default_factory=dict)  # verification, calibration, versions, date

    def to_json(self) -> str:
        d = self.data
        doc = {
            "convnext_export": META_VERSION,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "format": self.format,
            "precision": self.precision,
            "inference_precision": self.inference_precision,
            # The eval transform, spelled out for other tools: resize the shorter side to
            # floor(img_size / crop_pct) with `interpolation`, center crop img_size, scale to [0, 1],
            # normalize with mean/std; input NCHW float32 RGB.
            "preprocessing": {
                **Preprocessing.of(d).to_json(),
                "layout": "NCHW",
                "input": INPUT_NAME,
                "output": OUTPUT_NAME,
            },
            "dataset": {k: getattr(d, k) for k in DATASET_KEYS if hasattr(d, k)}
            if self.has_dataset
            else None,
            "data": data_to_dict(d),
            "model_options": self.model_options,
            "source": self.source,
            "run_dir": self.run_dir,
            **self.extra,
        }
        return json.dumps(doc, default=str)

    @classmethod
    def from_json(cls, text: str, where: str) -> ExportMeta:
        try:
            doc = json.loads(text)
            data = data_from_dict(doc.get("data"))
            # an older file may lack keys: they keep what its data section (or the default) says
            data = Preprocessing.from_json(doc.get("preprocessing") or {}, Preprocessing.of(data)).apply(data)
            known = {"arch", "num_classes", "class_names", "format", "precision", "inference_precision"}
            known |= {
                "preprocessing",
                "data",
                "model_options",
                "source",
                "run_dir",
                "convnext_export",
                "dataset",
            }
            return cls(
                arch=str(doc["arch"]),
                num_classes=int(doc["num_classes"]),
                class_names=list(doc["class_names"]) if doc.get("class_names") else None,
                data=data,
                format=doc.get("format", ""),
                precision=doc.get("precision", "fp32"),
                inference_precision=doc.get("inference_precision"),
                model_options=dict(doc.get("model_options") or {}),
                source=doc.get("source", ""),
                run_dir=doc.get("run_dir"),
                has_dataset=doc.get("dataset") is not None,
                extra={k: v for k, v in doc.items() if k not in known},
            )
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{where} has unreadable convnext metadata ({e}); re-export it") from None


def foreign_meta(path: str, fmt: str, num_classes: int) -> ExportMeta:
    note(
        f"{path} carries no convnext metadata (exported by another tool): assuming 224 px, crop 0.875, "
        "bicubic, ImageNet mean/std and unnamed classes"
    )
    return ExportMeta(arch=fmt, num_classes=num_classes, class_names=None, data=DataConfig(), format=fmt)


# ----------------------------------------------------------------------------------------------- runners


class Runner:
    """A model ready to run, whatever runs it.

    ``preprocess`` (one uint8 image -> float input, any thread) -> ``forward`` (a stacked float (N, 3, H, W)
    batch -> (N, num_classes) float32 logits on x's device; calling the runner is the same) -> labels.
    ``cam`` is Grad-CAM (PyTorch weights only: ``supports_cam``); ``describe`` what a server reports.

    Attributes: ``backend`` (a runtime's name, or a benchmark variant: torch-bf16, openvino-int8), ``arch``,
    ``num_classes``, ``class_names`` (None: unnamed), ``data`` (eval DataConfig: img_size, crop_pct,
    interpolation, mean, std, and a training run's dataset settings), ``precision`` (what actually runs:
    fp32, bf16, int8, ...), ``source`` (the file or weights it came from), ``meta`` (an exported file's
    metadata, else None), ``fixed_size`` (the only H = W an exported graph takes; None: any).
    """

    backend: str = ""
    arch: str = ""
    num_classes: int = 0
    class_names: list[str] | None = None
    data: DataConfig
    precision: str = "fp32"
    source: str = ""
    meta: ExportMeta | None = None
    fixed_size: int | None = None
    supports_cam: bool = False
    labels: list[str] | None = None  # display names (``convnext serve`` sets them)
    _transform: tuple[DataConfig, Callable[[Tensor], Tensor]] | None = None

    def preprocess(self, img: Tensor) -> Tensor:
        """One decoded uint8 (3, H, W) image -> the model's input, with ``data``'s eval transform."""
        if self._transform is None or self._transform[0] is not self.data:
            from ..data.transforms import build_eval_transform

            self._transform = (self.data, build_eval_transform(self.data))
        return self._transform[1](img)

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_all(self, x: Tensor) -> list[Tensor]:
        """Every output of the graph, in order (a detector's boxes, labels, scores[, masks]); ``forward``
        is the first of a one-output graph."""
        return [self.forward(x)]

    def detect(self, image: Tensor) -> dict[str, Tensor]:
        """An exported detector on one float (3, H, W) image in [0, 1]: torchvision's output dict (boxes
        in the image's pixels, labels, scores[, masks])."""
        return dict(zip(DETECTION_OUTPUTS, self.forward_all(image)))

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def cam(self, x: Tensor, classes: Tensor) -> Tensor:
        raise UserError(f"Grad-CAM needs PyTorch weights; this server runs an exported {self.backend} file")

    def where(self) -> str:
        """The device it computes on, as a report names it."""
        return str(getattr(self, "device", "cpu")).lower()

    def describe(self) -> dict[str, Any]:
        d = self.data
        prep = {**Preprocessing.of(d).to_json(), "resize_shorter_side": int(d.img_size / d.crop_pct)}
        return {
            "model": self.arch,
            "backend": self.backend,
            "precision": self.precision,
            "device": self.where(),
            "num_classes": self.num_classes,
            "weights": self.source,
            "preprocessing": prep,
            "cam": self.supports_cam,
        }


def from_meta(runner: Runner, meta: ExportMeta, backend: str, source: str) -> None:
    runner.backend, runner.source, runner.meta = backend, source, meta
    runner.arch, runner.num_classes, runner.class_names = meta.arch, meta.num_classes, meta.class_names
    runner.data = dataclasses.replace(meta.data)


def threads_or_default(threads: int | None) -> int:
    return int(threads) if threads else torch.get_num_threads()


def numpy_input(x: Tensor) -> Any:
    return x.detach().to("cpu", torch.float32).contiguous().numpy()


class RunnerModule(nn.Module):
    """An ``nn.Module`` face for a runner, so ``evaluate`` and ``predict`` run exported files unchanged.

    It has no parameters and no gradients (Grad-CAM needs PyTorch weights); autocast does not reach into
    onnxruntime or OpenVINO, which run at the precision the file was exported for.
    """

    exported = True

    def __init__(self, runner: Runner) -> None:
        super().__init__()
        self.runner = runner
        self.num_classes = runner.num_classes

    def forward(self, x: Tensor) -> Tensor:
        size = self.runner.fixed_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            raise UserError(
                f"{self.runner.source} was exported for {size}x{size} inputs, not "
                f"{x.shape[-2]}x{x.shape[-1]}; re-export with --img-size {x.shape[-1]}"
            )
        if self.runner.backend not in ("torch", "pt2") and _autocast_on(x.device.type):
            note(
                f"--amp does not reach into {self.runner.backend}: {self.runner.source} runs as exported "
                f"({self.runner.precision})"
            )
        return self.runner(x)


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


# ------------------------------------------------------------------------------------- writing a runtime


@dataclass
class Written:
    runs_as: str
    max_rel_diff: float
    agreement: float | None
    notes: list[str]


@dataclass
class WriteContext:
    """What a runtime's ``write`` gets besides the model, the metadata and the target path."""

    images: Tensor | None = None  # preprocessed N x 3 x S x S: int8 calibration, real inputs for the checks
    opset: int = 20
    say: Callable[[str], None] = lambda _m: None
    cache: dict[str, Any] = field(default_factory=dict)  # kept between writes of one model (OpenVINO)


def example(size: int, batch: int, images: Tensor | None = None) -> Tensor:
    """Real images where we have them (calibration), else a seeded normal batch."""
    if images is not None and len(images) >= batch:
        return images[:batch].contiguous()
    g = torch.Generator().manual_seed(batch)
    return torch.randn(batch, 3, size, size, generator=g)


def verify(
    runner: Runner, model: nn.Module, size: int, images: Tensor | None, what: str, rtol: float | None = None
) -> float:
    """Max relative difference to PyTorch over the verification batches; above ``rtol`` (default
    ``PARITY_RTOL``, read when called) it raises."""
    rtol = PARITY_RTOL if rtol is None else rtol
    worst = 0.0
    for b in VERIFY_BATCHES:
        x = example(size, b, images)
        with torch.no_grad():
            ref = model(x)
        out = runner(x)
        if out.shape != ref.shape:
            raise UserError(
                f"{what} gives logits of shape {tuple(out.shape)} at batch {b}, PyTorch {tuple(ref.shape)}"
            )
        worst = max(worst, relative_diff(out, ref))
    if not worst <= rtol:  # also catches NaN
        raise UserError(
            f"{what} differs from PyTorch by {worst:.2e} relative (limit {rtol:.0e}); the file was deleted"
        )
    return worst


def detection_examples(size: int) -> list[Tensor]:
    """Two seeded float images in [0, 1], not square and of different sizes (the graph's H and W are
    dynamic), with flat rectangles on noise so that a detector finds objects of several sizes."""
    g = torch.Generator().manual_seed(size)
    out = []
    for h, w in ((size, round(size * 4 / 3)), (round(size * 3 / 4), size)):
        img = torch.rand(3, h, w, generator=g) * 0.3
        for _ in range(6):
            y0 = int(torch.randint(0, max(1, h - 8), (1,), generator=g))
            x0 = int(torch.randint(0, max(1, w - 8), (1,), generator=g))
            bh = int(torch.randint(4, max(5, h // 2), (1,), generator=g))
            bw = int(torch.randint(4, max(5, w // 2), (1,), generator=g))
            img[:, y0 : y0 + bh, x0 : x0 + bw] = torch.rand(3, 1, 1, generator=g)
        out.append(img)
    return out


def verify_detections(runner: Runner, model: nn.Module, images: list[Tensor], what: str) -> tuple[float, int]:
    """Every detection PyTorch makes on ``images`` is in the exported file's and the other way round, same
    label, box within ``DETECTION_RTOL`` of the image's longer side, score and mask within 1e-3; those whose
    score is within 1e-3 of the model's score threshold, or of the last place at its per-image limit, may
    fall on either side of it by rounding and are not counted. Returns the worst box difference
    (relative) and how many detections were compared; raises when anything differs."""
    worst, compared = 0.0, 0
    heads = model.roi_heads
    for img in images:
        with torch.no_grad():
            ref = model([img])[0]
        out = {k: v.cpu() for k, v in runner.detect(img).items()}
        side = float(max(img.shape[1:]))
        floor = float(heads.score_thresh) + 1e-3
        for scores in (ref["scores"], out["scores"]):
            if len(scores) == heads.detections_per_img:
                floor = max(floor, float(scores[-1]) + 1e-3)
        firm = [int((d["scores"] >= floor).sum()) for d in (ref, out)]
        if firm[0] != firm[1]:
            raise UserError(
                f"{what} finds {firm[1]} objects scoring {floor:.3f} or more on a test image, PyTorch "
                f"{firm[0]}; the file was deleted"
            )
        for a, b in ((ref, out), (out, ref)):
            for i in range(firm[0]):
                same = (b["labels"] == a["labels"][i]).nonzero().flatten()
                if len(same) == 0:
                    raise UserError(f"{what} and PyTorch disagree on the labels of a test image's objects")
                diffs = (b["boxes"][same] - a["boxes"][i]).abs().amax(1)
                j = int(same[int(diffs.argmin())])
                box = float(diffs.min()) / side
                score = abs(float(b["scores"][j]) - float(a["scores"][i]))
                mask = float((b["masks"][j] - a["masks"][i]).abs().max()) if "masks" in a else 0.0
                if not (box <= DETECTION_RTOL and score <= 1e-3 and mask <= 1e-3):
                    raise UserError(
                        f"{what} differs from PyTorch (box {box:.1e} of the image side, score {score:.1e}, "
                        f"mask {mask:.1e}); the file was deleted"
                    )
                worst = max(worst, box)
        compared += firm[0]
    return worst, compared


def detection_notes(compared: int) -> list[str]:
    """What an export report says when the check had no detection to compare (untrained weights)."""
    if compared:
        return []
    return [
        "no detection scored above the threshold on the test images (untrained weights?): only the "
        "counts were compared"
    ]


def count_modules(model: nn.Module) -> dict[str, int]:
    """LayerNorm and Conv2d modules: how many LayerNormalization / Conv nodes a faithful graph has."""
    return {
        "LayerNormalization": sum(isinstance(m, nn.LayerNorm) for m in model.modules()),
        "Conv": sum(isinstance(m, nn.Conv2d) for m in model.modules()),
    }


def dynamic_batch() -> tuple[dict[int, Any]]:
    """torch.export's dynamic batch dimension (a batch-1 trace would specialise the batch to a constant)."""
    return ({0: torch.export.Dim("batch", min=1, max=4096)},)


def torch_export(model: nn.Module, size: int) -> torch.export.ExportedProgram:
    x = torch.randn(TRACE_BATCH, 3, size, size)
    try:
        return torch.export.export(model, (x,), dynamic_shapes=dynamic_batch())
    except Exception as e:  # torch.export raises many kinds; the first line says what
        raise UserError(f"torch.export failed ({str(e).strip().splitlines()[0]})") from None


def top1_agreement(a: Tensor, b: Tensor) -> float:
    return float((a.argmax(1) == b.argmax(1)).float().mean())


def batched(runner: Runner, images: Tensor, batch: int = 32) -> Tensor:
    return torch.cat([runner(images[i : i + batch]) for i in range(0, len(images), batch)])


def exported_path(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"exported model {p} does not exist")
    return p


def resize_data(runner: Runner, path: str, img_size: int | None, crop_pct: float | None) -> None:
    """Apply ``--img-size``/``--crop-pct`` to an exported runner's preprocessing (a graph with a fixed
    input size takes that size only)."""
    if img_size is not None and runner.fixed_size is not None and int(img_size) != runner.fixed_size:
        raise UserError(
            f"{path} was exported for {runner.fixed_size} px inputs; re-export it with --img-size {img_size}"
        )
    data = dataclasses.replace(runner.data)
    if img_size is not None:
        data.img_size = int(img_size)
    if crop_pct is not None:
        data.crop_pct = float(crop_pct)
    runner.data = data


def open_exported(
    path: str | Path, *, device: str = "cpu", threads: int | None = None, hint: str | None = None
) -> Runner:
    """The runner for an exported file, chosen by its suffix (:func:`convnext.runtimes.runtime_for`).

    ``hint`` overrides an OpenVINO IR's precision hint (fp32 | bf16); ``threads`` defaults to torch's.
    """
    from . import runtime_for, suffix_list

    p = exported_path(path)
    runtime = runtime_for(p)
    if runtime.suffix is None:
        raise UserError(f"{p} is not an exported model ({suffix_list()})")
    return runtime.runner(str(p), device=device, threads=threads, hint=hint)


def write_verified(
    model: nn.Module,
    meta: ExportMeta,
    target: Path,
    *,
    images: Tensor | None = None,
    opset: int = 20,
    say: Callable[[str], None] = lambda _m: None,
    ov_cache: dict[str, Any] | None = None,
) -> Written:
    """Write ``model`` (plain, eval) as ``meta.format`` at ``meta.precision`` to ``target`` and verify it.

    ``images`` (preprocessed, N x 3 x S x S): calibration data for int8 (required there) and real inputs
    for the checks. Raises UserError when the file is not PyTorch's function; the caller deletes it.
    ``ov_cache``: a dict kept between calls for the same model, so that its OpenVINO conversion (the slow
    part) is done once for fp32, bf16 and int8 (the benchmark writes all three).
    """
    from . import EXPORTERS

    runtime = EXPORTERS.get(meta.format)
    if runtime is None:
        raise UserError(f"unknown export format {meta.format!r}")
    ctx = WriteContext(images=images, opset=opset, say=say, cache={} if ov_cache is None else ov_cache)
    return runtime.write(model, meta, target, ctx)
