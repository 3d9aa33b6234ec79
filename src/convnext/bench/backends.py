"""Deployment backends: the same weights in PyTorch, onnxruntime and OpenVINO, timed interleaved on CPU.

``torch`` is our fastest fp32 PyTorch (``fuse_for_inference``), the reference of every ratio; ``torch-bf16``
our fastest bf16 PyTorch (``fuse_for_inference(dtype=torch.bfloat16)``), which on a CPU without native bf16
is the fp32 model and is run, and reported, as fp32; the others run files exported (and verified) by
``convnext export`` into a temporary folder.
"""

from __future__ import annotations

import contextlib
import importlib
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..models import build_model, get_variant
from ..runtimes import BENCH, BENCH_BACKENDS, TORCH, is_exported, require_runtime
from ..weights.containers import TRAIN_FORMAT
from .models import check_img_size
from .timing import Rounds, device_name, interleaved_rounds, matmul_peak_step, ratio_of_medians, ratio_spread

BACKENDS = BENCH_BACKENDS  # torch, torch-bf16, then each runtime's: convnext.runtimes.RUNTIMES' bench
CPU = torch.device("cpu")


def parse_backends(spec: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``torch,onnxruntime,...`` -> a tuple, "torch" first (every ratio is against it)."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    for b in items:
        if b not in BACKENDS:
            raise UserError(f"unknown backend {b!r} for --backend; choose from {', '.join(BACKENDS)}")
    return ("torch", *dict.fromkeys(b for b in items if b != "torch"))


def runtime_versions(backends: tuple[str, ...]) -> dict[str, str]:
    """torch's version, and that of each runtime package the chosen backends ran in."""
    versions = {"torch": torch.__version__}
    for runtime in dict.fromkeys(BENCH[b][0] for b in backends):
        for package in runtime.packages:
            with contextlib.suppress(ImportError):
                module = importlib.import_module(package)
                version = getattr(module, "__version__", None) or module.get_version()
                versions[package] = str(version).split("-")[0]
    return versions


def _weights(model: str | None, weights: str | None, img_size: int | None) -> tuple:
    """(model, data config, arch, class names, from a run?, source): the given weights, else random ones."""
    if weights:
        from ..inference.loading import load_for_inference

        if is_exported(weights):
            raise UserError(f"--backend needs PyTorch weights to export from, not the exported {weights}")
        loaded = load_for_inference(weights, model, img_size=img_size)
        from_run = loaded.run_dir is not None or loaded.info.format == TRAIN_FORMAT
        return loaded.model, loaded.data, loaded.arch, loaded.class_names, from_run, loaded.checkpoint
    model = model or "convnext_tiny"
    try:
        get_variant(model)
    except ValueError as e:
        raise UserError(str(e)) from None
    torch.manual_seed(0)
    net = build_model(model, layer_scale_init_value=1.0)
    with torch.no_grad():  # biases off zero too: every op must be exported, nothing hidden by an init
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.1, 0.1)
    from ..data.config import DataConfig

    data = DataConfig()
    if img_size is not None:
        data.img_size = int(img_size)
    return net, data, model, None, False, f"random {model}"


def _calibration(calibration: str | None, data: Any, from_run: bool, weights: str | None, size: int) -> tuple:
    """int8's calibration images and a note: ``calibration``, else the run's data, else random inputs."""
    if calibration or from_run:
        from ..export.calibration import load_calibration

        calib = load_calibration(calibration, data, run_data=from_run, where=str(weights)).images
        return calib, f"int8 calibrated on {len(calib)} images"
    g = torch.Generator().manual_seed(0)
    calib = torch.randn(32, 3, size, size, generator=g)
    return calib, "int8 calibrated on 32 random inputs (speed only: pass --calibration for accuracy)"


def _runners(
    chosen: tuple[str, ...],
    net: nn.Module,
    plain: nn.Module,
    data: Any,
    arch: str,
    names: Any,
    source: str,
    calib: Any,
    tmp: Path,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """One runner per backend: our PyTorch models, or a verified exported file opened by its runtime."""
    from ..runtimes.base import ExportMeta, open_exported, write_verified
    from ..runtimes.pytorch import TorchRunner

    runners: dict[str, Any] = {}
    ov_cache: dict[str, Any] = {}  # one OpenVINO conversion for fp32, bf16 and int8
    for b in chosen:
        runtime, precision = BENCH[b]
        if runtime is TORCH:
            amp = None if precision == "fp32" else getattr(torch, {"bf16": "bfloat16"}[precision])
            r = TorchRunner(net, data, arch=arch, class_names=names, amp=amp, fuse=True, source=source)
            if amp is not None and r.model.compute_dtype == torch.float32:
                # No native bf16: fuse_for_inference gave the fp32 model, and it runs as it is; autocast
                # around it would run its stem, downsampling and head in emulated bf16, neither fp32 nor bf16.
                r.amp = None
            runners[b] = r
        else:
            say(f"exporting for {b}")
            meta = ExportMeta(arch, getattr(net, "num_classes", 0), names, data, runtime.format, precision)
            meta.inference_precision = runtime.inference_precision(precision)
            target = tmp / f"{b}{runtime.suffix}"
            images = calib if precision == "int8" else None
            write_verified(plain, meta, target, images=images, ov_cache=ov_cache)
            runners[b] = open_exported(target)
    return runners


def _time_runners(
    runners: dict[str, Any], x: torch.Tensor, repeats: int, warmup: int, latency: bool, say: Callable
) -> tuple[Rounds, float]:
    """Warm every runner up, then the interleaved rounds; also the fp32 matmul peak in GFLOP/s."""
    x1 = x[:1].clone()
    say("warm-up")
    for r in runners.values():
        for _ in range(max(warmup, 1)):
            r(x)
            if latency:
                r(x1)
    gemm, gemm_flops = matmul_peak_step(CPU, torch.float32)
    gemm()
    steps = {b: (lambda r=r: r(x)) for b, r in runners.items()}
    lat_steps = {b: (lambda r=r: r(x1)) for b, r in runners.items()} if latency else {}
    rounds = interleaved_rounds(steps, lat_steps, gemm, CPU, repeats, say)
    return rounds, gemm_flops / statistics.median(rounds.gemm) / 1e9


def _results(
    runners: dict[str, Any], rounds: Rounds, diffs: dict[str, float], batch_size: int, latency: bool
) -> list[dict[str, Any]]:
    """One row per backend: medians, and ratios of the median times to torch's (they agree with the
    images/s and latencies printed beside them) with the per-round spread."""
    times, lat = rounds.times, rounds.latency
    return [
        {
            "backend": b,
            "precision": r.precision,
            "images_per_s": batch_size / statistics.median(times[b]),
            "images_per_s_rounds": [batch_size / t for t in times[b]],
            "latency_ms": statistics.median(lat[b]) * 1e3 if latency else None,
            "speedup_vs_torch": ratio_of_medians(times["torch"], times[b]),
            "speedup_vs_torch_range": ratio_spread(times["torch"], times[b]),
            "latency_speedup_vs_torch": ratio_of_medians(lat["torch"], lat[b]) if latency else None,
            "latency_speedup_vs_torch_range": ratio_spread(lat["torch"], lat[b]) if latency else None,
            "max_rel_diff_vs_torch": diffs[b],
        }
        for b, r in runners.items()
    ]


def _cpu_notes(chosen: tuple[str, ...]) -> list[str]:
    from ..models.cpu import cpu_has_int8_dot, cpu_has_native_bf16

    notes = []
    if any(BENCH[b][1] == "int8" for b in chosen) and not cpu_has_int8_dot():
        notes.append("no VNNI/AMX on this CPU: int8 runs without int8 dot-product instructions")
    if TORCH.bench_name("bf16") in chosen and not cpu_has_native_bf16():
        notes.append("no native bf16 on this CPU: torch-bf16 ran our fp32 model (emulated bf16 is slower)")
    return notes


def run_backend_benchmark(
    model: str | None = None,
    *,
    weights: str | None = None,
    backends: tuple[str, ...] | str = BACKENDS,
    batch_size: int = 32,
    img_size: int | None = None,
    repeats: int = 5,
    warmup: int = 1,
    calibration: str | None = None,
    latency: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time the same weights in every backend, interleaved round-robin, and return the figures as data.

    int8 calibrates on ``calibration`` (a folder), else on the run's training data when ``weights`` is a run,
    else on random inputs (the timing holds; the accuracy of such a file means nothing). ``precision`` in
    each result is what the backend really ran.
    """
    from ..export.core import plain_copy
    from ..models.cpu import cpu_features, cpu_features_line
    from ..runtimes.base import relative_diff

    say = progress or (lambda _msg: None)
    chosen = parse_backends(backends)
    if repeats < 1 or batch_size < 1:
        raise UserError("--repeats and --batch-size must be >= 1")
    for b in chosen:
        runtime, precision = BENCH[b]
        if runtime.format:
            require_runtime(runtime, f"--format {runtime.format}", precision)
    net, data, arch, names, from_run, source = _weights(model, weights, img_size)
    check_img_size(int(data.img_size), arch, net)
    size = int(data.img_size)
    net = net.eval()
    plain = plain_copy(net)
    calib, calib_note = None, ""
    if any(BENCH[b][1] == "int8" for b in chosen):
        calib, calib_note = _calibration(calibration, data, from_run, weights, size)

    with tempfile.TemporaryDirectory(prefix="convnext-bench-") as tmp:
        runners = _runners(chosen, net, plain, data, arch, names, source, calib, Path(tmp), say)
        x = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            ref = plain(x[:2])
        diffs = {b: relative_diff(r(x[:2]), ref) for b, r in runners.items()}
        rounds, peak_gflops = _time_runners(runners, x, repeats, warmup, latency, say)
        results = _results(runners, rounds, diffs, batch_size, latency)
        runners.clear()  # release the sessions before the temporary files go

    return {
        "mode": "backends", "model": arch, "weights": source, "batch_size": batch_size, "img_size": size,
        "device_name": device_name(CPU), "cpu_features": cpu_features(),
        "cpu_features_line": cpu_features_line(), "threads": torch.get_num_threads(),
        "versions": runtime_versions(chosen), "repeats": repeats,
        "matmul_peak_gflops": peak_gflops, "results": results,
        "notes": [n for n in [calib_note] if n] + _cpu_notes(chosen),
    }  # fmt: skip
