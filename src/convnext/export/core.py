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
  :mod:`convnext.runtimes.base`. Each format's writer and runner is a module of :mod:`convnext.runtimes`,
  whose table says its suffix, packages and precisions; this module is the part every format shares.
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
from ..messages import warn
from ..runtimes import DETECTION_FORMATS, EXPORTERS, FORMATS, PRECISIONS, SUPPORTED, require_runtime
from ..runtimes.base import (  # noqa: F401 (re-exported: the checks every format's writer runs)
    PARITY_RTOL,
    TRACE_BATCH,
    VERIFY_BATCHES,
    ExportMeta,
    Written,
    count_modules,
    torch_export,
    verify,
    write_verified,
)
from ..runtimes.openvino import DEFAULT_INT8_FLOAT, INT8_FLOAT_PARTS
from ..weights.containers import TRAIN_FORMAT
from .calibration import DEFAULT_SIZE, Calibration, load_calibration

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
    return EXPORTERS[fmt].files(out) if fmt in EXPORTERS else [out]


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
    if fmt in EXPORTERS:
        require_runtime(EXPORTERS[fmt], f"--format {fmt}", precision)


def plain_copy(model: nn.Module) -> nn.Module:
    """An eval copy running the paper's plain ops (no chunked MLP, no fused blocks), without grads."""
    from ..models import set_chunked_mlp

    plain = set_chunked_mlp(copy.deepcopy(model).cpu().eval(), False)
    plain.requires_grad_(False)
    return plain


# ------------------------------------------------------------------------------------------------- export


def export_model(
    weights: str | None,
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
    weights: str | None,
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
    from ..inference.dense import DETECTION, dense_task, loaded_for_export
    from ..inference.loading import load_for_inference

    task = dense_task(weights, model_name)  # detection, segmentation: their own loader
    if task == DETECTION and (fmt not in DETECTION_FORMATS or precision != "fp32"):
        raise UserError(
            f"a detector exports as --format {' or '.join(DETECTION_FORMATS)} in fp32 (torch.export cannot "
            f"capture torchvision's Mask/Faster R-CNN, and no int8/bf16 path is verified for it); not "
            f"--format {fmt} --precision {precision}"
        )
    if task:
        loaded = loaded_for_export(weights, model_name, img_size)
    else:
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
        # where the CPU has bf16 units (OpenVINO falls back to fp32 elsewhere): measured faster than fp32
        # there, with the same top-1 on the quickstart model (BENCHMARKS.md, "Export").
        inference_precision=EXPORTERS[fmt].inference_precision(precision),
        model_options=_model_options(loaded),
        source=str(loaded.checkpoint),
        run_dir=str(loaded.run_dir.resolve()) if loaded.run_dir is not None else None,
        has_dataset=from_run,
        extra={
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "convnext": _version(),
            **({"task": task} if task else {}),
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
            warn(f"skipped {len(calib.skipped)} unreadable calibration image(s): {shown}{more}")
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
