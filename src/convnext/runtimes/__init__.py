"""The one table of runtimes: every backend a ConvNeXt runs in, with what it needs and what it writes.

Each :class:`Runtime` record is the only place that names a backend, its file suffix, the optional packages
(and the extra that installs them), the precisions it exports and the precisions ``convnext benchmark``
times; its runner and writer live in the module the record names (``pytorch``, ``onnx``, ``openvino``,
``pt2`` in this package), imported only when a file of that kind is opened or written. ``export``,
``serve``, ``benchmark``, ``predict`` and ``evaluate`` all read this table, and :func:`runtime_for` alone
decides how to open a weights file (by its suffix).

This module imports no torch, so that the CLI's ``--help`` can list the backends instantly.

Adding a runtime: one module here with a ``Runner`` subclass as ``RUNNER`` (and, when it writes files,
``write(model, meta, target, ctx) -> Written``), and one record in ``RUNTIMES``.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError


@dataclass(frozen=True)
class Runtime:
    """One backend."""

    name: str  # --backend name (serve, benchmark) and ``Runner.backend``
    module: str  # the module of this package holding its ``RUNNER`` (and ``write``)
    title: str  # how a sentence names it ("onnxruntime", "torch.export", ...)
    format: str | None = None  # ``convnext export --format`` (None: it runs PyTorch weights, writes nothing)
    suffix: str | None = None  # its files' suffix
    companions: tuple[str, ...] = ()  # files written beside: "{stem}.bin" (OpenVINO), "{name}.data" (ONNX)
    packages: tuple[str, ...] = ()  # optional packages that running its files needs
    write_packages: tuple[str, ...] = ()  # and that writing them needs too
    extra: str = "export"  # pip install 'convnext[extra]' installs ``packages``
    precisions: tuple[str, ...] = ("fp32",)  # what it exports
    precision_packages: tuple[tuple[str, str], ...] = ()  # (precision, package) that precision needs too
    bench: tuple[str, ...] = ()  # the precisions ``convnext benchmark --backend`` times
    verified_as: str = ""  # what the export report says ran the verification
    run_precision: tuple[tuple[str, str], ...] = ()  # (exported precision, the hint stored for its runner)
    detection: bool = False  # it exports torchvision's detectors (Mask/Faster R-CNN: fp32, any H x W)

    @property
    def runner(self) -> Any:
        """Its ``Runner`` subclass (imports the module, and torch)."""
        return importlib.import_module(f"{__name__}.{self.module}").RUNNER

    def write(self, *args: Any, **kwargs: Any) -> Any:
        """Write and verify a file of this runtime (see :func:`convnext.runtimes.base.write_verified`)."""
        return importlib.import_module(f"{__name__}.{self.module}").write(*args, **kwargs)

    def inference_precision(self, precision: str) -> str | None:
        """The precision hint an exported file stores for its runner (OpenVINO's: int8's float layers run in
        bf16 where the CPU has bf16 units), or None."""
        return dict(self.run_precision).get(precision)

    def files(self, out: Path) -> list[Path]:
        """Every file a write to ``out`` makes: ``out`` and its companions."""
        return [out] + [out.with_name(c.format(stem=out.stem, name=out.name)) for c in self.companions]

    def bench_name(self, precision: str) -> str:
        """The benchmark's backend name: ``openvino`` for fp32, ``openvino-int8`` for int8, ..."""
        return self.name if precision == "fp32" else f"{self.name}-{precision}"


RUNTIMES: tuple[Runtime, ...] = (
    Runtime("torch", "pytorch", "PyTorch", bench=("fp32", "bf16")),
    Runtime(
        "onnxruntime", "onnx", "onnxruntime", format="onnx", suffix=".onnx", companions=("{name}.data",),
        packages=("onnxruntime",), write_packages=("onnx", "onnxscript"), bench=("fp32",),
        verified_as="onnxruntime", detection=True,
    ),
    Runtime(
        "openvino", "openvino", "OpenVINO", format="openvino", suffix=".xml", companions=("{stem}.bin",),
        packages=("openvino",), extra="openvino", precisions=("fp32", "bf16", "int8"),
        precision_packages=(("int8", "nncf"),), bench=("fp32", "bf16", "int8"),
        verified_as="OpenVINO (fp32 graph)",
        run_precision=(("fp32", "fp32"), ("bf16", "bf16"), ("int8", "bf16")), detection=True,
    ),
    Runtime("pt2", "pt2", "torch.export", format="pt2", suffix=".pt2", verified_as="torch.export"),
)  # fmt: skip

BY_NAME = {r.name: r for r in RUNTIMES}
TORCH = BY_NAME["torch"]
EXPORTERS = {r.format: r for r in RUNTIMES if r.format}  # export format -> runtime
FORMATS = {f: r.suffix for f, r in EXPORTERS.items()}  # export format -> suffix
EXPORT_SUFFIXES = tuple(r.suffix for r in RUNTIMES if r.suffix)
PRECISIONS = tuple(dict.fromkeys(p for r in RUNTIMES for p in r.precisions))
SUPPORTED = {f: r.precisions for f, r in EXPORTERS.items()}  # export format -> its precisions
DETECTION_FORMATS = tuple(f for f, r in EXPORTERS.items() if r.detection)  # formats a detector exports to
SERVE_BACKENDS = ("auto", *BY_NAME)  # convnext serve --backend
# convnext benchmark --backend: name -> (runtime, precision), torch first (every ratio is against it)
BENCH = {r.bench_name(p): (r, p) for r in RUNTIMES for p in r.bench}
BENCH_BACKENDS = tuple(BENCH)
# Which extra installs an optional package (pyproject's optional dependencies).
EXTRAS = {
    m: r.extra
    for r in RUNTIMES
    for m in (*r.write_packages, *r.packages, *dict(r.precision_packages).values())
}


def runtime_for(path: str | os.PathLike) -> Runtime:
    """How to open ``path``: the runtime of an exported file by its suffix, else PyTorch (a checkpoint, tag,
    URL, Hugging Face folder or run folder)."""
    suffix = Path(str(path)).suffix.lower()
    return next((r for r in RUNTIMES if r.suffix and r.suffix == suffix), TORCH)


def exported_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """An exported file's convnext metadata as JSON data, read without compiling it (its runtime's
    ``read_meta``); None when it has none or cannot be read."""
    import json

    runtime = runtime_for(path)
    reader = getattr(importlib.import_module(f"{__name__}.{runtime.module}"), "read_meta", None)
    try:
        raw = reader(str(path)) if reader is not None else None
        doc = json.loads(raw) if raw else None
    except Exception:  # a broken file: its runner says why when it is opened
        return None
    return doc if isinstance(doc, dict) else None


def exported_arch(path: str | os.PathLike) -> str | None:
    """The architecture an exported file's metadata names; None when it names none or cannot be read."""
    doc = exported_meta(path)
    return doc.get("arch") if doc else None


def is_exported(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an exported model (by its suffix)."""
    return runtime_for(path) is not TORCH


def suffix_list(sep: str = ", ", last: str = " or ") -> str:
    """The exported suffixes as a sentence would list them (".onnx, .xml or .pt2")."""
    return sep.join(EXPORT_SUFFIXES[:-1]) + last + EXPORT_SUFFIXES[-1]


def by_suffix_help() -> str:
    """ "onnxruntime for .onnx, openvino for .xml, pt2 (torch.export) for .pt2": how ``auto`` picks."""
    return ", ".join(
        f"{r.name}{'' if r.title.lower() == r.name else f' ({r.title})'} for {r.suffix}"
        for r in RUNTIMES
        if r.suffix
    )


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


def require_runtime(runtime: Runtime, purpose: str, precision: str | None = None, write: bool = True) -> None:
    """Every package writing (``write``) and running ``runtime`` at ``precision`` needs, or one sentence
    naming the first one missing."""
    for mod in (*runtime.write_packages, *runtime.packages) if write else runtime.packages:
        require(mod, purpose)
    for p, mod in runtime.precision_packages:
        if p == precision:
            require(mod, f"--precision {p}")
