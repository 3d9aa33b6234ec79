"""``convnext export``: a trained ConvNeXt to ONNX, OpenVINO IR (fp32, bf16, int8) or a torch.export program.

What makes an export trustworthy here:

* The PLAIN model is exported (``set_chunked_mlp(False)``, never ``fuse_for_inference``): its ops are the
  paper's, one LayerNormalization per norm, and nothing depends on the batch that was traced.
* The graph is traced at batch 2 with a dynamic batch dimension (a batch-1 trace lets exporters specialise
  the batch to a constant) and checked at batch 1 and 3.
* Right after writing, the file is run in its runtime (onnxruntime, OpenVINO at fp32, torch.export) and
  compared with PyTorch; more than 1e-5 relative difference (max |diff| / max |logit|) and the file is
  deleted and the command fails. The graph is also counted: as many LayerNorm and Conv ops as the model
  has modules, so a dropped block is caught even when its tiny default layer scale hides it in the logits.
* Everything is written into a hidden folder next to ``--out`` and moved into place only when verified:
  an error or Ctrl-C leaves no partial file.
* The file carries its metadata (architecture, classes, preprocessing, dataset settings): see
  :mod:`convnext.inference.backends`.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import errno
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..inference.backends import (
    INPUT_NAME,
    META_KEY,
    OUTPUT_NAME,
    ExportMeta,
    OnnxRunner,
    OpenVINORunner,
    PT2Runner,
    Runner,
    relative_diff,
    require,
)
from ..models.cpu import cpu_features_line, cpu_has_int8_dot
from ..weights.containers import TRAIN_FORMAT
from .calibration import DEFAULT_SIZE, Calibration, load_calibration
from .openvino_form import openvino_form

FORMATS = {"onnx": ".onnx", "openvino": ".xml", "pt2": ".pt2"}
PRECISIONS = ("fp32", "bf16", "int8")
SUPPORTED = {"onnx": ("fp32",), "openvino": ("fp32", "bf16", "int8"), "pt2": ("fp32",)}
PARITY_RTOL = 1e-5  # max |exported - pytorch| / max |pytorch logits|
TRACE_BATCH = 2
VERIFY_BATCHES = (1, 3)
OV_RUN_PRECISION = {"fp32": "fp32", "bf16": "bf16", "int8": "bf16"}  # the hint stored with an IR
DEFAULT_OPSET = 20  # >= 18 asked; 20 has the Gelu op (one node instead of an erf formula)


@dataclass
class ExportResult:
    path: Path
    files: list[Path]  # everything written (.xml + .bin, .onnx [+ .onnx.data])
    format: str
    precision: str
    runs_as: str  # what the runtime actually computes in on this machine
    max_rel_diff: float | None  # fp32 parity against PyTorch (bf16/int8: of the fp32 graph before)
    meta: ExportMeta
    seconds: float
    calibration: Calibration | None = None
    agreement: float | None = None  # bf16/int8: share of images whose top-1 equals fp32's
    notes: list[str] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files if f.exists())


def companion_files(out: Path, fmt: str) -> list[Path]:
    """Every file an export to ``out`` writes: OpenVINO's .bin, ONNX's external weights (> 2 GB)."""
    if fmt == "openvino":
        return [out, out.with_suffix(".bin")]
    if fmt == "onnx":
        return [out, out.with_name(out.name + ".data")]
    return [out]


def check_request(fmt: str | None, precision: str, out: str | os.PathLike, force: bool) -> tuple[str, Path]:
    """The format (from --format or the --out suffix) and the output path, or one sentence why not.
    Runs before any weights are read."""
    path = Path(out).expanduser()
    by_suffix = {v: k for k, v in FORMATS.items()}.get(path.suffix.lower())
    if fmt is None:
        if by_suffix is None:
            raise UserError(f"cannot tell the format from --out {path}; pass --format onnx, openvino or pt2")
        fmt = by_suffix
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision not in SUPPORTED[fmt]:
        others = [f for f, p in SUPPORTED.items() if precision in p]
        raise UserError(
            f"--format {fmt} does not support --precision {precision} (it exports "
            f"{'/'.join(SUPPORTED[fmt])}); use --format {' or '.join(others)} for {precision}"
        )
    if path.suffix.lower() != FORMATS[fmt]:
        raise UserError(f"--out {path} must end with {FORMATS[fmt]} for --format {fmt}")
    if not force:
        existing = [p for p in companion_files(path, fmt) if p.exists()]
        if existing:
            raise UserError(f"{existing[0]} already exists; pass --force to replace it")
    if path.is_dir():
        raise UserError(f"--out {path} is a folder; give a file name ending with {FORMATS[fmt]}")
    return fmt, path


def check_packages(fmt: str, precision: str) -> None:
    """Fail in one sentence, before anything is read, when an optional package is missing."""
    if fmt == "onnx":
        for mod in ("onnx", "onnxscript", "onnxruntime"):
            require(mod, "--format onnx")
    elif fmt == "openvino":
        require("openvino", "--format openvino")
        if precision == "int8":
            require("nncf", "--precision int8")


def plain_copy(model: nn.Module) -> nn.Module:
    """An eval copy running the paper's plain ops (no chunked MLP, no fused blocks), without grads."""
    from ..models import set_chunked_mlp

    plain = set_chunked_mlp(copy.deepcopy(model).cpu().eval(), False)
    plain.requires_grad_(False)
    return plain


def _example(size: int, batch: int, images: torch.Tensor | None = None) -> torch.Tensor:
    """Real images where we have them (calibration), else a seeded normal batch."""
    if images is not None and len(images) >= batch:
        return images[:batch].contiguous()
    g = torch.Generator().manual_seed(batch)
    return torch.randn(batch, 3, size, size, generator=g)


def verify(
    runner: Runner, model: nn.Module, size: int, images: torch.Tensor | None, rtol: float, what: str
) -> float:
    """Max relative difference to PyTorch over the verification batches; above ``rtol`` it raises."""
    worst = 0.0
    for b in VERIFY_BATCHES:
        x = _example(size, b, images)
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


def count_modules(model: nn.Module) -> dict[str, int]:
    """LayerNorm and Conv2d modules: how many LayerNormalization / Conv nodes a faithful graph has."""
    return {
        "LayerNormalization": sum(isinstance(m, nn.LayerNorm) for m in model.modules()),
        "Conv": sum(isinstance(m, nn.Conv2d) for m in model.modules()),
    }


# ------------------------------------------------------------------------------------------------ writers


def _dynamic_batch() -> tuple[dict[int, Any]]:
    return ({0: torch.export.Dim("batch", min=1, max=4096)},)


def torch_export(model: nn.Module, size: int) -> torch.export.ExportedProgram:
    x = torch.randn(TRACE_BATCH, 3, size, size)
    try:
        return torch.export.export(model, (x,), dynamic_shapes=_dynamic_batch())
    except Exception as e:  # torch.export raises many kinds; the first line says what
        raise UserError(f"torch.export failed ({str(e).strip().splitlines()[0]})") from None


def write_onnx(model: nn.Module, path: Path, meta: ExportMeta, size: int, opset: int) -> None:
    import warnings

    x = torch.randn(TRACE_BATCH, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                model,
                (x,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=_dynamic_batch(),
                verbose=False,
            )
        except Exception as e:
            raise UserError(f"ONNX export failed ({str(e).strip().splitlines()[0]})") from None
    program.model.metadata_props[META_KEY] = meta.to_json()
    program.save(str(path))


def check_onnx_graph(path: Path, model: nn.Module, opset: int) -> dict[str, int]:
    """The written graph's opset and op counts against the model's modules (a dropped block fails)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    version = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if version < 18:
        raise UserError(f"{path} has opset {version}; the exporter must write opset >= 18")
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    for op, want in count_modules(model).items():
        if counts.get(op, 0) != want:
            raise UserError(
                f"the ONNX graph has {counts.get(op, 0)} {op} nodes but the model has {want}; "
                "the file was deleted"
            )
    return counts


def to_openvino(model: nn.Module, meta: ExportMeta, size: int) -> Any:
    """An in-memory OpenVINO model converted from torch.export (no ONNX needed), static H x W, of the
    model's channels-first form (:mod:`.openvino_form`: same function, the ops OpenVINO runs fastest)."""
    import openvino as ov

    program = torch_export(openvino_form(model), size)
    om = ov.convert_model(program, input=[(-1, 3, size, size)])
    om.inputs[0].get_tensor().set_names({INPUT_NAME})
    om.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    om.set_rt_info(meta.to_json(), [META_KEY])
    return om


INT8_FLOAT_PARTS = ("dwconv", "stem", "head")  # what --int8-float may keep out of int8
# The depthwise convs stay in float by default: in int8 their input needs its own quantize pass (and two
# layout reorders) on the residual stream, and the int8 depthwise kernel is slower than the bf16 one
# (ConvNeXt-T, batch 32, 2-core VNNI EPYC: 67.2 against 60.6 images/s); they are 2% of the FLOPs.
DEFAULT_INT8_FLOAT = ("dwconv",)


def float_scope(om: Any, parts: tuple[str, ...]) -> Any:
    """The NNCF IgnoredScope that keeps ``parts`` in float: the depthwise convs (GroupConvolution), the stem
    (the first convolution) and the head (the last MatMul)."""
    import nncf

    ops = [op for op in om.get_ordered_ops() if op.get_type_name() in ("Convolution", "MatMul")]
    names = []
    if "stem" in parts and ops:
        names.append(ops[0].get_friendly_name())
    if "head" in parts and ops:
        names.append(ops[-1].get_friendly_name())
    types = ["GroupConvolution"] if "dwconv" in parts else []
    return nncf.IgnoredScope(names=names, types=types)


def quantize_int8(
    om: Any, calib: torch.Tensor, say: Callable[[str], None], keep_float: tuple[str, ...] = DEFAULT_INT8_FLOAT
) -> Any:
    """NNCF post-training quantization (int8 weights and activations) calibrated on ``calib``.

    ``ModelType.TRANSFORMER`` is NNCF's scheme for LayerNorm networks: the LayerNorm / GELU / residual adds
    stay in float (on the channels-first graph SmoothQuant only touches the head, its one MatMul). On the
    quickstart digits model it loses nothing (98.61%, 100% agreement), where NNCF's CNN scheme, ~5% faster,
    lost 0.28 points (BENCHMARKS.md, "Export"); ``keep_float`` (dwconv, stem, head) keeps more in float for
    a model that needs it (slower). The depthwise convs are float by default (``DEFAULT_INT8_FLOAT``).
    """
    import contextlib
    import logging
    import sys

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime" on import
    import nncf

    logging.getLogger("nncf").setLevel(logging.ERROR)
    items = [calib[i : i + 1].numpy() for i in range(len(calib))]
    say(f"quantizing to int8 with NNCF on {len(items)} calibration images")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: not on our stdout
            return nncf.quantize(
                om,
                nncf.Dataset(items),
                subset_size=len(items),
                model_type=nncf.ModelType.TRANSFORMER,
                ignored_scope=float_scope(om, keep_float) if keep_float else None,
            )
    except Exception as e:
        raise UserError(f"NNCF quantization failed ({str(e).strip().splitlines()[0]})") from None


def _top1_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(1) == b.argmax(1)).float().mean())


def _batched(runner: Runner, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    return torch.cat([runner(images[i : i + batch]) for i in range(0, len(images), batch)])


# ------------------------------------------------------------------------------------------------- export


def export_model(
    weights: str,
    *,
    out: str | os.PathLike,
    fmt: str | None = None,
    precision: str = "fp32",
    calibration: str | None = None,
    calibration_size: int = DEFAULT_SIZE,
    img_size: int | None = None,
    model_name: str | None = None,
    ema: bool | None = None,
    force: bool = False,
    opset: int = DEFAULT_OPSET,
    int8_float: tuple[str, ...] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export ``weights`` (anything ``predict`` takes) to ``out``; see the module docstring for the checks."""
    say = progress or (lambda _m: None)
    start = time.perf_counter()
    fmt, path = check_request(fmt, precision, out, force)
    if opset < 18:
        raise UserError(f"--opset must be 18 or newer (LayerNormalization as one op), got {opset}")
    check_packages(fmt, precision)
    bad = [p for p in int8_float or () if p not in INT8_FLOAT_PARTS]
    if bad:
        raise UserError(f"--int8-float {bad[0]!r} is not one of {', '.join(INT8_FLOAT_PARTS)} or none")
    if int8_float is not None and precision != "int8":
        raise UserError("--int8-float goes with --precision int8")

    with work_folder(path) as tmp:  # made before the weights are read: an unwritable --out fails at once
        return _export(
            weights, path, tmp, fmt, precision, calibration, calibration_size, img_size, model_name, ema,
            opset, int8_float, say, start,
        )  # fmt: skip


def _export(
    weights: str,
    path: Path,
    tmp: Path,
    fmt: str,
    precision: str,
    calibration: str | None,
    calibration_size: int,
    img_size: int | None,
    model_name: str | None,
    ema: bool | None,
    opset: int,
    int8_float: tuple[str, ...] | None,
    say: Callable[[str], None],
    start: float,
) -> ExportResult:
    from ..inference.loading import load_for_inference

    loaded = load_for_inference(weights, model_name, ema=ema, img_size=img_size)
    if getattr(loaded.model, "exported", False):
        raise UserError(f"{weights} is already an exported file; export from PyTorch weights or a run folder")
    from_run = loaded.run_dir is not None or loaded.info.format == TRAIN_FORMAT
    meta = ExportMeta(
        arch=loaded.arch,
        num_classes=loaded.num_classes,
        class_names=loaded.class_names,
        data=loaded.data,
        format=fmt,
        precision=precision,
        # OpenVINO's hint: fp32 exports run in fp32; int8's unquantized layers (LayerNorm, GELU, adds) in bf16
        # where the CPU has bf16 units (OpenVINO falls back to fp32 elsewhere): measured 1.2x faster than
        # fp32 there, with the same top-1 on the quickstart model (BENCHMARKS.md, "Export").
        inference_precision=OV_RUN_PRECISION[precision] if fmt == "openvino" else None,
        model_options=_model_options(loaded),
        source=str(loaded.checkpoint),
        run_dir=str(loaded.run_dir.resolve()) if loaded.run_dir is not None else None,
        has_dataset=from_run,
        extra={
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "convnext": _version(),
        },
    )
    calib = None
    if precision == "int8":
        calib = load_calibration(
            calibration,
            loaded.data,
            run_data=from_run,
            where=str(loaded.run_dir or weights),
            limit=calibration_size,
        )
        meta.extra["calibration"] = {"images": len(calib.images), "source": calib.source}
        meta.extra["int8_float"] = list(DEFAULT_INT8_FLOAT if int8_float is None else int8_float)
        if calib.skipped:
            shown = "; ".join(f"{p} ({why})" for p, why in calib.skipped[:10])
            more = f" and {len(calib.skipped) - 10} more" if len(calib.skipped) > 10 else ""
            say(f"skipped {len(calib.skipped)} unreadable calibration image(s): {shown}{more}")
    model = plain_copy(loaded.model)

    images = calib.images if calib is not None else None
    written = write_verified(model, meta, tmp / path.name, images=images, opset=opset, say=say)
    files = []
    try:
        for src in sorted(tmp.iterdir()):
            dst = path.parent / src.name
            os.replace(src, dst)
            files.append(dst)
        for stale in companion_files(path, fmt):  # --force over an export that had a companion file
            if stale not in files and stale.exists():
                stale.unlink()
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror or e})") from None
    return ExportResult(
        path=path,
        files=[path] + [f for f in files if f != path],
        format=fmt,
        precision=precision,
        runs_as=written.runs_as,
        max_rel_diff=written.max_rel_diff,
        meta=meta,
        seconds=time.perf_counter() - start,
        calibration=calib,
        agreement=written.agreement,
        notes=written.notes,
    )


PARTIAL = ".{name}.partial-{pid}"  # the hidden work folder beside --out


def remove_stale_partials(path: Path) -> list[Path]:
    """Remove the work folders that exports to ``path`` left when their process died (SIGKILL, a power
    cut): those whose process id no longer runs. Another running export's folder is left alone."""
    removed = []
    prefix = f".{path.name}.partial-"
    for old in path.parent.glob(f"{prefix}*"):
        pid = old.name[len(prefix) :]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive (or another user's: PermissionError below)
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
        except PermissionError:
            continue
    return removed


@contextlib.contextmanager
def work_folder(path: Path) -> Iterator[Path]:
    """The hidden folder beside ``path`` that an export is written into and moved out of when verified.

    It is removed on any error, and on Ctrl-C before the interrupt goes on (the previous SIGINT handler runs
    after: KeyboardInterrupt, or the CLI's exit 130), so even a runtime that aborts when interrupted inside
    native code leaves nothing. A folder that cannot be written is one sentence."""
    tmp = path.parent / PARTIAL.format(name=path.name, pid=os.getpid())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(path)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        folder = path.parent if e.filename in (None, str(tmp)) else e.filename
        if e.errno in (errno.EEXIST, errno.ENOTDIR):
            raise UserError(
                f"cannot write {path}: a file stands in the way of the folder {path.parent}"
            ) from None
        raise UserError(f"cannot write {path}: {folder} is not writable ({e.strerror or e})") from None
    previous = None
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread and signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, None):

        def on_interrupt(signum: int, frame: Any) -> None:
            shutil.rmtree(tmp, ignore_errors=True)
            signal.signal(signal.SIGINT, previous)
            if previous == signal.SIG_DFL:
                os.kill(os.getpid(), signum)  # die of it, as without us
            elif callable(previous):
                previous(signum, frame)
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield tmp
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Written:
    runs_as: str
    max_rel_diff: float
    agreement: float | None
    notes: list[str]


def write_verified(
    model: nn.Module,
    meta: ExportMeta,
    target: Path,
    *,
    images: torch.Tensor | None = None,
    opset: int = DEFAULT_OPSET,
    say: Callable[[str], None] = lambda _m: None,
    ov_cache: dict[str, Any] | None = None,
) -> Written:
    """Write ``model`` (plain, eval) as ``meta.format`` at ``meta.precision`` to ``target`` and verify it.

    ``images`` (preprocessed, N x 3 x S x S): calibration data for int8 (required there) and real inputs
    for the checks. Raises UserError when the file is not PyTorch's function; the caller deletes it.
    ``ov_cache``: a dict kept between calls for the same model, so that its OpenVINO conversion (the slow
    part) is done once for fp32, bf16 and int8 (the benchmark writes all three).
    """
    size, fmt, notes = int(meta.data.img_size), meta.format, []
    agreement = None
    if fmt == "onnx":
        say(f"exporting {meta.arch} to ONNX (opset {opset}, dynamic batch, {size} px)")
        meta.extra["opset"] = opset
        write_onnx(model, target, meta, size, opset)
        check_onnx_graph(target, model, opset)
        runner: Runner = OnnxRunner(str(target))
        say("verifying in onnxruntime")
        diff = verify(runner, model, size, images, PARITY_RTOL, "the ONNX file run in onnxruntime")
        runs_as = runner.precision
    elif fmt == "pt2":
        say(f"exporting {meta.arch} with torch.export (dynamic batch, {size} px)")
        program = torch_export(model, size)
        torch.export.save(program, str(target), extra_files={f"{META_KEY}.json": meta.to_json()})
        runner = PT2Runner(str(target))
        diff = verify(runner, model, size, images, PARITY_RTOL, "the torch.export program")
        runs_as = runner.precision
    elif fmt == "openvino":
        if meta.precision == "int8" and images is None:
            raise UserError("int8 needs calibration images")
        diff, runs_as, agreement = _export_openvino(
            model, meta, size, target, meta.precision, images, say, notes, ov_cache
        )
    else:
        raise UserError(f"unknown export format {fmt!r}")
    return Written(runs_as, diff, agreement, notes)


def _export_openvino(
    model: nn.Module,
    meta: ExportMeta,
    size: int,
    target: Path,
    precision: str,
    images: torch.Tensor | None,
    say: Callable[[str], None],
    notes: list[str],
    cache: dict[str, Any] | None = None,
) -> tuple[float, str, float | None]:
    import openvino as ov

    cache = {} if cache is None else cache
    if "model" not in cache:
        say(f"converting {meta.arch} to OpenVINO (torch.export, dynamic batch, {size} px)")
        cache["model"] = to_openvino(model, meta, size)
    om = cache["model"]  # save_model and nncf.quantize leave it as it is
    om.set_rt_info(meta.to_json(), [META_KEY])
    # The fp32 graph is checked first whatever the precision: conversion errors are not rounding.
    fp32_path = target.with_name("fp32-" + target.name)
    ov.save_model(om, str(fp32_path), compress_to_fp16=False)
    core = ov.Core()
    ref = OpenVINORunner(str(fp32_path), hint="fp32", core=core)
    say("verifying in OpenVINO at fp32")
    diff = verify(ref, model, size, images, PARITY_RTOL, "the OpenVINO model run at fp32")
    if precision == "fp32":
        os.replace(fp32_path, target)
        os.replace(fp32_path.with_suffix(".bin"), target.with_suffix(".bin"))
        return diff, ref.precision, None
    if precision == "bf16":
        # Weights stored as fp16 (half the file); the bf16 hint makes the CPU plugin run in bf16.
        ov.save_model(om, str(target), compress_to_fp16=True)
    else:
        q = quantize_int8(om, images, say, tuple(meta.extra.get("int8_float", DEFAULT_INT8_FLOAT)))
        ov.save_model(q, str(target), compress_to_fp16=False)
        if not cpu_has_int8_dot():
            notes.append(
                f"this CPU has no int8 dot-product instructions ({cpu_features_line()}): int8 may gain "
                "little over fp32 here; compare: convnext benchmark --backend torch,openvino,openvino-int8"
            )
    for p in (fp32_path, fp32_path.with_suffix(".bin")):
        p.unlink()
    runner = OpenVINORunner(str(target), core=core)
    check = images if images is not None else _example(size, 8)
    agreement = _top1_agreement(_batched(runner, check), _batched(ref, check))
    del ref
    return diff, runner.precision, agreement


def _model_options(loaded: Any) -> dict[str, Any]:
    m = loaded.model
    opts: dict[str, Any] = {}
    for key in ("depths", "dims"):
        if hasattr(m, key):
            opts[key] = list(getattr(m, key))
    return opts


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("convnext")
    except Exception:
        return "unknown"
