"""One interface to run a ConvNeXt whatever it was saved as: PyTorch weights, ONNX, OpenVINO IR or pt2.

A :class:`Runner` is what ``predict``, ``evaluate``, ``benchmark`` and ``serve`` need and nothing more::

    runner = open_runner("model.onnx")          # or .xml, .pt2, a checkpoint, a tag, a run folder
    transform = build_eval_transform(runner.data)  # the preprocessing the model was trained/exported with
    logits = runner(torch.stack([transform(img) for img in images]))  # float NCHW in, (N, classes) out
    runner.class_names, runner.arch, runner.precision  # what it predicts, what it is, what actually runs

``runner.precision`` is what the backend really computes in (OpenVINO picks bf16 on CPUs with bf16 units
unless told otherwise; we tell it), never just what was asked for.

Exported files carry our metadata (architecture, class names, preprocessing, dataset settings) as one JSON
document under the key ``convnext``: ONNX ``metadata_props``, OpenVINO ``rt_info``, pt2 ``extra_files``
(``convnext.json``). A file exported by another tool runs too, with ImageNet preprocessing assumed and a note.

The optional runtimes (onnxruntime, openvino) are imported only when a file of theirs is opened; without
them the error says which extra to install.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.config import DataConfig
from ..device import autocast, note
from ..errors import UserError
from ..models.cpu import cpu_has_int8_dot, cpu_has_native_bf16

EXPORT_SUFFIXES = (".onnx", ".xml", ".pt2")
META_KEY = "convnext"  # ONNX metadata_props key, OpenVINO rt_info key; pt2 extra file META_KEY + ".json"
META_VERSION = 1
INPUT_NAME, OUTPUT_NAME = "input", "logits"
# Which extra installs what a format needs (pyproject's optional dependencies).
EXTRAS = {"onnx": "export", "onnxscript": "export", "onnxruntime": "export", "openvino": "openvino"}
EXTRAS["nncf"] = "openvino"

# The run's dataset settings, spelled out in the metadata (the whole data section is stored too).
DATASET_KEYS = ("dataset", "root", "train_split", "val_split", "class_list", "val_fraction", "split_seed")
# OpenVINO precision hints <-> our names.
OV_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def require(module: str, purpose: str) -> Any:
    """Import an optional package, or fail in one sentence naming the extra that installs it. Their usage
    reporting is switched off first (``convnext.telemetry``): importing OpenVINO would report it."""
    from ..telemetry import disable_telemetry

    disable_telemetry()
    if module == "nncf":  # its import pulls in torch.utils.cpp_extension, which warns "no CUDA runtime"
        import logging

        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module, "export")
        raise UserError(f"{purpose} needs the {module} package: pip install 'convnext[{extra}]'") from None


def is_exported(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an exported model (by its suffix: .onnx, .xml, .pt2)."""
    return str(path).lower().endswith(EXPORT_SUFFIXES)


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
                "img_size": d.img_size,
                "crop_pct": d.crop_pct,
                "crop_mode": getattr(d, "crop_mode", "center"),
                "interpolation": d.interpolation,
                "mean": list(d.mean),
                "std": list(d.std),
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
            pre = doc.get("preprocessing") or {}
            for k in ("img_size", "crop_pct", "crop_mode", "interpolation", "mean", "std"):
                if k in pre and hasattr(data, k):
                    setattr(data, k, tuple(pre[k]) if isinstance(pre[k], list) else pre[k])
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


def _foreign_meta(path: str, fmt: str, num_classes: int) -> ExportMeta:
    note(
        f"{path} carries no convnext metadata (exported by another tool): assuming 224 px, crop 0.875, "
        "bicubic, ImageNet mean/std and unnamed classes"
    )
    return ExportMeta(arch=fmt, num_classes=num_classes, class_names=None, data=DataConfig(), format=fmt)


# ----------------------------------------------------------------------------------------------- runners


class Runner:
    """A model ready to run: ``runner(x)`` takes a float (N, 3, H, W) tensor, preprocessed with
    ``build_eval_transform(runner.data)``, and returns (N, num_classes) float32 logits on x's device.

    Attributes: ``backend`` (torch | torch-bf16 | torch-fp16 | onnxruntime | openvino | openvino-int8 |
    pt2), ``arch``, ``num_classes``, ``class_names`` (None: unnamed), ``data`` (eval DataConfig: img_size,
    crop_pct, interpolation, mean, std, and a training run's dataset settings), ``precision`` (what
    actually runs: fp32, bf16, int8, ...), ``source`` (the file or weights it came from), ``meta`` (an
    exported file's metadata, else None), ``fixed_size`` (the only H = W an exported graph takes).
    """

    backend: str = ""
    arch: str = ""
    num_classes: int = 0
    class_names: list[str] | None = None
    data: DataConfig
    precision: str = "fp32"
    source: str = ""
    meta: ExportMeta | None = None
    fixed_size: int | None = None  # the only input size an exported graph accepts (None: any)

    def __call__(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """The same as calling the runner (the name ``convnext serve``'s runners use)."""
        return self(x)

    def describe(self) -> str:
        return f"{self.backend} {self.precision}"


def _from_meta(runner: Runner, meta: ExportMeta, backend: str, source: str) -> None:
    runner.backend, runner.source, runner.meta = backend, source, meta
    runner.arch, runner.num_classes, runner.class_names = meta.arch, meta.num_classes, meta.class_names
    runner.data = dataclasses.replace(meta.data)


def _threads(threads: int | None) -> int:
    return int(threads) if threads else torch.get_num_threads()


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
    ) -> None:
        self.device = torch.device(device)
        self.amp = amp
        model = model.eval().to(self.device)
        fuse = fuse and amp in (None, torch.bfloat16)
        if fuse:
            from ..models import fuse_for_inference

            model = fuse_for_inference(model, dtype=amp)
        self.model = model
        self.data, self.arch, self.class_names, self.source = data, arch, class_names, source
        self.num_classes = int(getattr(model, "num_classes", 0) or 0)
        self.backend = "torch" if amp is None else f"torch-{_dtype_name(amp)}"
        self.precision = "fp32" if amp is None else f"{_dtype_name(amp)} autocast"
        if fuse:
            self.precision += " (fused)"
            if amp is not None and getattr(model, "compute_dtype", amp) == torch.float32:
                self.precision = "fp32 (fused; this CPU has no native bf16)"

    def __call__(self, x: Tensor) -> Tensor:
        with torch.inference_mode(), autocast(self.device, self.amp):
            return self.model(x.to(self.device)).float()


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


def _numpy_input(x: Tensor) -> Any:
    return x.detach().to("cpu", torch.float32).contiguous().numpy()


class OnnxRunner(Runner):
    """An .onnx file in onnxruntime (CPU; CUDA when asked for and onnxruntime-gpu is installed)."""

    def __init__(self, path: str, *, device: str = "cpu", threads: int | None = None) -> None:
        ort = require("onnxruntime", f"running {path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = _threads(threads)
        opts.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(path, opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for a broken file
            raise UserError(f"onnxruntime cannot load {path} ({str(e).splitlines()[0]})") from None
        outputs = self.session.get_outputs()
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        raw = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        n = outputs[0].shape[-1] if isinstance(outputs[0].shape[-1], int) else 0
        meta = ExportMeta.from_json(raw, path) if raw else _foreign_meta(path, "onnx", n)
        _from_meta(self, meta, "onnxruntime", path)
        self.fixed_size = inp.shape[-1] if isinstance(inp.shape[-1], int) else None
        self.providers = self.session.get_providers()
        self.precision = meta.precision + ("" if providers[0] == "CPUExecutionProvider" else " (CUDA)")

    def __call__(self, x: Tensor) -> Tensor:
        out = self.session.run(None, {self.input_name: _numpy_input(x)})[0]
        return torch.from_numpy(out).to(x.device)


class OpenVINORunner(Runner):
    """An OpenVINO IR (.xml + .bin) on the CPU, compiled with an explicit precision hint.

    OpenVINO's CPU plugin runs fp32 models in bf16 by default wherever the CPU has bf16 instructions (AMX,
    and AVX512-BF16 as on this project's test host), which moves logits by ~1e-2 relative. We set the hint
    the file was exported for (``inference_precision`` in its metadata: fp32 unless bf16 was asked for), so
    an fp32 export runs in fp32; ``precision`` reports what the compiled model really uses.
    """

    def __init__(
        self,
        path: str,
        *,
        device: str = "CPU",
        threads: int | None = None,
        hint: str | None = None,
        core: Any = None,
    ) -> None:
        ov = require("openvino", f"running {path}")
        if not Path(path).with_suffix(".bin").is_file():
            raise UserError(f"{path} needs its weights file {Path(path).with_suffix('.bin')} next to it")
        self.core = core or ov.Core()
        try:
            model = self.core.read_model(path)
        except RuntimeError as e:
            raise UserError(f"OpenVINO cannot read {path} ({str(e).splitlines()[0]})") from None
        meta = None
        if model.has_rt_info([META_KEY]):
            meta = ExportMeta.from_json(model.get_rt_info([META_KEY]).astype(str), path)
        else:
            shape = model.outputs[0].get_partial_shape()
            n = shape[-1].get_length() if shape[-1].is_static else 0
            meta = _foreign_meta(path, "openvino", n)
        _from_meta(self, meta, "openvino", path)
        dim = model.inputs[0].get_partial_shape()[-1]
        self.fixed_size = dim.get_length() if dim.is_static else None
        hint = hint or meta.inference_precision or "fp32"
        if hint == "bf16" and not cpu_has_native_bf16():  # what OpenVINO does itself, also under an ISA cap
            hint = "fp32"
        config = {
            "INFERENCE_PRECISION_HINT": OV_HINTS.get(hint, hint),
            "INFERENCE_NUM_THREADS": _threads(threads),
        }
        ov_device = "CPU" if str(device).lower() in ("cpu", "auto") else str(device).upper()
        self.compiled = self.core.compile_model(model, ov_device, config)
        self.request = self.compiled.create_infer_request()
        ran = _ov_type_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        quantized = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
        self.precision = f"int8 (other layers {ran})" if quantized else ran
        self.backend = "openvino-int8" if quantized else "openvino"
        if quantized and not cpu_has_int8_dot():
            note(
                f"this CPU has no int8 dot-product instructions (VNNI or AMX): {path} may gain little over "
                "an fp32 export here; compare with convnext benchmark --backend torch,openvino,openvino-int8"
            )

    def __call__(self, x: Tensor) -> Tensor:
        out = self.request.infer({0: _numpy_input(x)}, share_inputs=True)
        return torch.from_numpy(next(iter(out.values())).copy()).to(x.device)


def _ov_type_name(t: Any) -> str:
    s = str(t).lower()
    return "bf16" if "bf16" in s or "bfloat16" in s else "fp16" if "f16" in s or "float16" in s else "fp32"


def check_pt2_safe(path: str) -> None:
    """Refuse a .pt2 archive that would unpickle anything: ``torch.export.load`` unpickles weights and
    constants flagged ``use_pickle`` and falls back to ``weights_only=False`` for sample inputs that fail the
    safe loader, so a crafted file could run code. Ours hold raw tensors and safe-loadable inputs only."""
    import io
    import zipfile

    why = None
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if name.endswith(("_weights_config.json", "_constants_config.json")):
                    config = json.loads(z.read(name)).get("config", {})
                    if any(v.get("use_pickle") or "tensor_meta" not in v for v in config.values()):
                        why = f"{name} holds pickled objects"
                elif "/sample_inputs/" in name and not name.endswith("/"):
                    try:
                        torch.load(io.BytesIO(z.read(name)), weights_only=True)
                    except Exception:
                        why = f"{name} is not loadable with weights_only=True"
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise UserError(f"{path} is not a torch.export archive ({e})") from None
    if why:
        raise UserError(f"{path}: {why}, which could run code when loaded; refusing it (re-export it)")


class PT2Runner(Runner):
    """A ``torch.export`` ExportedProgram saved with ``torch.export.save`` (.pt2), checked to hold no
    pickled objects before it is loaded (:func:`check_pt2_safe`)."""

    def __init__(self, path: str, *, device: str = "cpu") -> None:
        check_pt2_safe(path)
        extra = {f"{META_KEY}.json": ""}
        try:
            program = torch.export.load(path, extra_files=extra)
        except Exception as e:  # a zip that is not an ExportedProgram raises several kinds
            raise UserError(f"torch.export cannot load {path} ({str(e).splitlines()[0]})") from None
        raw = extra[f"{META_KEY}.json"]
        meta = ExportMeta.from_json(raw, path) if raw else _foreign_meta(path, "pt2", 0)
        _from_meta(self, meta, "pt2", path)
        self.device = torch.device("cpu" if device == "auto" else device)
        self.module = program.module().to(self.device)
        self.precision = meta.precision
        self.fixed_size = meta.data.img_size

    def __call__(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.module(x.to(self.device, torch.float32)).float().to(x.device)


def open_exported(
    path: str | os.PathLike,
    *,
    device: str = "cpu",
    threads: int | None = None,
    hint: str | None = None,
) -> Runner:
    """The runner for an exported file (.onnx -> onnxruntime, .xml -> OpenVINO, .pt2 -> torch.export).

    ``hint`` overrides an OpenVINO IR's precision hint (fp32 | bf16); ``threads`` defaults to torch's.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"exported model {p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        return OnnxRunner(str(p), device=device, threads=threads)
    if suffix == ".xml":
        return OpenVINORunner(str(p), threads=threads, hint=hint)
    if suffix == ".pt2":
        return PT2Runner(str(p), device=device)
    raise UserError(f"{p} is not an exported model (.onnx, .xml or .pt2)")


def _resize_data(runner: Runner, path: str, img_size: int | None, crop_pct: float | None) -> None:
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


# What each serve/CLI backend name accepts (an int8 IR is an OpenVINO file too).
_BACKEND_FILES = {"onnxruntime": ("onnxruntime",), "openvino": ("openvino", "openvino-int8"), "pt2": ("pt2",)}


def load_backend(
    weights: str,
    backend: str,
    *,
    img_size: int | None = None,
    crop_pct: float | None = None,
    device: str = "cpu",
    threads: int | None = None,
) -> Runner:
    """``convnext serve``'s hook: the runner for an exported file, which must be of ``backend``
    (onnxruntime | openvino | pt2). It has ``forward(x)``, ``arch``, ``num_classes``, ``class_names``,
    ``data`` (DataConfig) and ``precision``, as serve's ``CallableRunner`` expects."""
    if backend not in _BACKEND_FILES:
        raise UserError(f"backend {backend!r} runs no exported file; use {', '.join(_BACKEND_FILES)}")
    runner = open_exported(weights, device=device, threads=threads)
    if runner.backend not in _BACKEND_FILES[backend]:
        raise UserError(f"{weights} runs on {runner.backend}, not on --backend {backend}")
    _resize_data(runner, str(weights), img_size, crop_pct)
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
    """A runner for anything ``predict`` takes: an exported file, or PyTorch weights (file, URL, tag, HF
    folder, run folder) run by :class:`TorchRunner` with ``amp`` (none | bf16 | fp16) autocast."""
    if is_exported(weights):
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


# ------------------------------------------------------------------------------ predict/evaluate bridge


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


def load_exported(
    path: str,
    *,
    img_size: int | None = None,
    crop_pct: float | None = None,
    device: str = "cpu",
) -> Any:
    """``inference.loading.Loaded`` for an exported file: ``model`` is a :class:`RunnerModule`.

    ``run_dir`` is the training run the file was exported from (the file's folder when that run is not
    recorded), so ``evaluate`` without ``--data`` uses the run's validation split, from the dataset settings
    the file carries; None when the file holds no dataset settings.
    """
    from ..weights.load import CheckpointInfo
    from .loading import Loaded

    runner = open_exported(path, device=device)
    _resize_data(runner, path, img_size, crop_pct)
    data = runner.data
    meta = runner.meta
    info = CheckpointInfo(
        source=str(path),
        path=str(path),
        format=meta.format if meta and meta.format else runner.backend,
        num_classes=runner.num_classes,
        class_names=runner.class_names,
        arch=runner.arch,
        metadata={"backend": runner.backend, "precision": runner.precision},
    )
    run_dir = None
    if meta is not None and meta.has_dataset:  # exported from training: evaluate may default to its val split
        run_dir = Path(meta.run_dir) if meta.run_dir else Path(path).parent
    return Loaded(
        model=RunnerModule(runner),
        arch=runner.arch,
        num_classes=runner.num_classes,
        class_names=runner.class_names,
        data=data,
        checkpoint=str(path),
        run_dir=run_dir,
        info=info,
    )
