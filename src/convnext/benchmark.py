"""Speed of our ConvNeXt against timm's and torchvision's, measured fairly on a noisy machine.

Fair means: the same architecture with the same weights (ours are copied into the peers and the outputs
are checked equal), timed interleaved in one process (ours, timm, torchvision, ours, ...), so that
whatever else the machine is doing hits every contestant alike; speed-ups are the median of per-round
ratios. The machine's matmul peak is timed in the same rounds, so a figure can be read as a fraction
of what the hardware can do.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .device import AMP_DTYPES
from .engine.allocator import allocator_tuned, tune_cpu_allocator
from .errors import UserError
from .models import build_model, get_variant
from .models.chunked_mlp import set_chunked_mlp, use_chunked_mlp
from .models.fuse import fuse_for_inference
from .models.profile import count_macs, count_params

PEERS = ("timm", "torchvision")
CHUNKED_NOTE = "chunked MLP in forward and backward (models/chunked_mlp.py), channels_last inside"
SMALL_NOTE = "the plain ops: inputs this small are faster unchunked (models/chunked_mlp.py)"
FUSED_NOTE = "fuse_for_inference (folded layer scale, chunked MLP, channels_last)"
TORCHVISION_MODELS = ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large")


# ----------------------------------------------------------------------------------------------------
# Our weights in the peers' layouts (convnext.weights.formats.from_ours, the inverse of its converters),
# so every contestant computes exactly the same function.


def to_peer_state_dict(state_dict: dict[str, Tensor], peer: str, peer_model: nn.Module) -> dict[str, Tensor]:
    """Our state dict renamed and reshaped for ``peer`` ("timm" or "torchvision")."""
    from .weights.formats import from_ours

    return from_ours(state_dict, peer, getattr(peer_model, "variant", None))


def build_peer(peer: str, name: str, num_classes: int) -> nn.Module:
    """The peer framework's own model of the same shape; one clear error when it is missing."""
    if peer == "timm":
        try:
            import timm
        except ImportError:
            raise UserError("--compare timm needs the timm package (pip install timm)") from None
        if not timm.is_model(name):
            raise UserError(f"timm has no model {name!r} to compare with")
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    if peer == "torchvision":
        import torchvision

        if name not in TORCHVISION_MODELS:
            raise UserError(f"torchvision has no {name}; it ships only {', '.join(TORCHVISION_MODELS)}")
        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    raise UserError(f"unknown peer {peer!r} for --compare; choose from {', '.join(PEERS)}")


# ----------------------------------------------------------------------------------------------------
# Memory


class _PeakRSS:
    """Peak resident set size while the block runs, sampled every millisecond by a thread.

    The C allocator returns big blocks to the OS at once, so the RSS after a step says nothing about the peak,
    and ``ru_maxrss`` is a process-wide high-water mark; sampling is the honest measure without psutil-only
    APIs. Falls back to the ``ru_maxrss`` delta where /proc is missing.
    """

    def __init__(self) -> None:
        try:
            import psutil

            proc = psutil.Process()
            self._read: Callable[[], int] | None = lambda: proc.memory_info().rss
            self.method = "CPU: peak RSS - RSS before, psutil sampled every 1 ms"
        except ImportError:
            page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
            if os.path.exists("/proc/self/statm"):

                def read() -> int:
                    with open("/proc/self/statm") as f:
                        return int(f.read().split()[1]) * page

                self._read = read
                self.method = "CPU: peak RSS - RSS before, /proc/self/statm sampled every 1 ms"
            else:
                self._read = None
                self.method = "CPU: resource.getrusage ru_maxrss delta (high-water mark: a lower bound)"
        self.peak = 0

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        if self._read is None:
            import resource

            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            yield
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
            return
        base = self._read()
        top = [base]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                top[0] = max(top[0], self._read())
                time.sleep(0.001)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            top[0] = max(top[0], self._read())
            self.peak = top[0] - base


def _measure_memory(step: Callable[[], Any], device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA: torch.cuda.max_memory_allocated"
    rss = _PeakRSS()
    with rss.measure():
        step()
    return rss.peak / 2**20, rss.method


# ----------------------------------------------------------------------------------------------------
# Contestants


@dataclass
class Contestant:
    name: str
    model: nn.Module
    step: Callable[[], Any] = field(repr=False)
    latency_step: Callable[[], Any] | None = field(default=None, repr=False)
    note: str = ""


def _adamw(params: Any, device: torch.device) -> tuple[torch.optim.Optimizer, str]:
    """AdamW with the fused kernel where this torch has it for the device (one kernel for all params)."""
    try:
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, fused=True), "fused"
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, foreach=True), "foreach"


def _make_steps(
    model: nn.Module,
    x: Tensor,
    x1: Tensor,
    targets: Tensor,
    mode: str,
    device: torch.device,
    amp: str | None,
) -> tuple[Callable[[], Any], Callable[[], Any] | None, str]:
    dtype = AMP_DTYPES[amp or "none"]

    def autocast() -> contextlib.AbstractContextManager:
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    def infer(inp: Tensor) -> Callable[[], Any]:
        def run() -> Tensor:
            with torch.inference_mode(), autocast():
                return model(inp)

        return run

    if mode == "infer":
        model.eval()
        return infer(x), infer(x1), ""

    model.train()
    opt, kind = _adamw(model.parameters(), device)
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    def train_step() -> Tensor:
        with autocast():
            loss = F.cross_entropy(model(x), targets)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return loss

    return train_step, None, f"AdamW {kind}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def matmul_peak_step(
    device: torch.device, dtype: torch.dtype, n: int = 2048
) -> tuple[Callable[[], Any], float]:
    """A large square GEMM and its FLOP count: the machine's practical peak for this dtype."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return (lambda: torch.mm(a, b)), 2.0 * n**3


# ----------------------------------------------------------------------------------------------------


def run_benchmark(
    model: str,
    *,
    batch_size: int = 32,
    img_size: int = 224,
    mode: str = "infer",
    channels_last: bool = False,
    compile: bool = False,
    amp: str | None = None,
    device: str = "cpu",
    compare: tuple[str, ...] = (),
    repeats: int = 5,
    warmup: int = 1,
    fuse: bool = True,
    tuned_malloc: bool = False,
    latency: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time ``model`` (ours, and the peers in ``compare``) and return every figure as plain data.

    In fp32 eager infer mode ours is ``fuse_for_inference(model)``, and in train mode on CPU its blocks run
    the chunked MLP; ``fuse=False`` times the plain ops instead (the reference). Peers run as
    their authors wrote them. ``channels_last`` converts every contestant and the input to that layout.
    ``tuned_malloc`` raises glibc's mmap threshold (engine/allocator.py) after memory is measured and before
    anything is timed: every contestant then runs with the allocator ``convnext train`` uses on CPU.
    """
    say = progress or (lambda _msg: None)
    if mode not in ("infer", "train"):
        raise UserError(f"--mode must be infer or train, not {mode!r}")
    if repeats < 1 or batch_size < 1 or img_size < 32:
        raise UserError("--repeats and --batch-size must be >= 1 and --img-size >= 32")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but torch sees no CUDA GPU on this machine")
    dev = torch.device(device)
    try:
        variant = get_variant(model)
    except ValueError as e:
        raise UserError(str(e)) from None
    peers = tuple(p for p in compare if p)
    for p in peers:
        if p not in PEERS:
            raise UserError(f"unknown peer {p!r} for --compare; choose from {', '.join(PEERS)}")

    torch.manual_seed(0)
    ours = build_model(model).to(dev)
    if variant.family == "v1":
        # Non-trivial layer scales and biases, so that weight copying and folding are really exercised.
        with torch.no_grad():
            for name, p in ours.named_parameters():
                if name.endswith("gamma") or name.endswith("bias"):
                    p.uniform_(-0.5, 0.5)
    peer_models = {}
    for p in peers:
        pm = build_peer(p, model, ours.num_classes)
        pm.load_state_dict(to_peer_state_dict(ours.state_dict(), p, pm), strict=True)
        peer_models[p] = pm.to(dev)

    x = torch.randn(batch_size, 3, img_size, img_size, device=dev)
    # What the model's own switch will decide inside the timed step (autocast and compile are set there).
    # The rule looks at a block's input: the stage-1 (or, isotropic, the only) feature map.
    stride = 16 if variant.family == "isotropic" else 4
    block_in = x.new_empty(1).expand(batch_size, 1, img_size // stride, img_size // stride)
    has_chunked = (
        amp is None
        and not compile
        and use_chunked_mlp(block_in, grad=mode == "train")
        and any(getattr(m, "chunked", False) for m in ours.modules())
    )
    x1 = torch.randn(1, 3, img_size, img_size, device=dev)
    targets = torch.randint(0, ours.num_classes, (batch_size,), device=dev)

    # The same function? Checked on one small batch before anything is timed.
    check_x = x[:2]
    with torch.inference_mode():
        ours.eval()
        ref = set_chunked_mlp(ours, False)(check_x).float()  # the plain ops are the reference
        set_chunked_mlp(ours, fuse)
        entries: list[tuple[str, nn.Module, str]] = []
        # Fused: fp32 eager only (its GEMMs write fp32 buffers; under --compile inductor does its own fusion).
        if mode == "infer" and fuse and amp is None and not compile:
            fused = fuse_for_inference(ours)
            entries.append(("ours", fused, FUSED_NOTE))
        else:
            note = CHUNKED_NOTE if has_chunked else f"{SMALL_NOTE}, channels_last inside"
            entries.append(("ours", ours, note if fuse else "plain model"))
        for p, pm in peer_models.items():
            entries.append((p, pm.eval(), ""))
        max_diff = {name: (m(check_x).float() - ref).abs().max().item() for name, m, _ in entries}

    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        x1 = x1.contiguous(memory_format=torch.channels_last)
    contestants = []
    for name, m, note in entries:
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        if compile:
            m = torch.compile(m)
        step, lat, opt_note = _make_steps(m, x, x1, targets, mode, dev, amp)
        note = "; ".join(filter(None, [note, opt_note]))
        contestants.append(Contestant(name, m, step, lat if latency else None, note))

    peak_dtype = AMP_DTYPES[amp or "none"] or torch.float32
    gemm, gemm_flops = matmul_peak_step(dev, peak_dtype)

    say("warm-up" + (" and compilation" if compile else ""))
    for c in contestants:
        for _ in range(max(warmup, 2 if compile else 1)):
            c.step()
            if c.latency_step is not None:
                c.latency_step()
    gemm()

    memory = {}
    for c in contestants:
        memory[c.name], mem_method = _measure_memory(c.step, dev)
    if tuned_malloc and dev.type == "cpu":
        tune_cpu_allocator()

    times: dict[str, list[float]] = {c.name: [] for c in contestants}
    lat_times: dict[str, list[float]] = {c.name: [] for c in contestants if c.latency_step is not None}
    gemm_times: list[float] = []
    for r in range(repeats):
        say(f"round {r + 1}/{repeats}")
        gemm_times.append(_time(gemm, dev))
        for c in contestants:  # round-robin: every contestant sees the same machine state
            times[c.name].append(_time(c.step, dev))
        for _ in range(3):
            for c in contestants:
                if c.latency_step is not None:
                    lat_times[c.name].append(_time(c.latency_step, dev))

    macs = count_macs(ours, img_size)
    flops_per_image = 2.0 * macs * (3.0 if mode == "train" else 1.0)  # backward ~ 2x forward
    peak = gemm_flops / statistics.median(gemm_times)
    results = []
    for c in contestants:
        ips = [batch_size / t for t in times[c.name]]
        med = statistics.median(ips)
        results.append(
            {
                "name": c.name,
                "images_per_s": med,
                "images_per_s_rounds": ips,
                "latency_ms": statistics.median(lat_times[c.name]) * 1e3 if c.name in lat_times else None,
                "peak_memory_mb": memory[c.name],
                "max_abs_diff_vs_ours": max_diff[c.name],
                "achieved_gflops": flops_per_image * med / 1e9,
                "fraction_of_matmul_peak": flops_per_image * med / peak,
                "note": c.note,
            }
        )
    ours_ips = times["ours"]
    for res in results:
        if res["name"] != "ours":
            per_round = [t_peer / t_ours for t_ours, t_peer in zip(ours_ips, times[res["name"]])]
            res["ours_speedup"] = statistics.median(per_round)
            if res["name"] in lat_times:
                lat = [p / o for o, p in zip(lat_times["ours"], lat_times[res["name"]])]
                res["ours_latency_speedup"] = statistics.median(lat)

    return {
        "model": model,
        "mode": mode,
        "batch_size": batch_size,
        "img_size": img_size,
        "device": str(dev),
        "device_name": _device_name(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "channels_last": channels_last,
        "compile": compile,
        "amp": amp,
        "repeats": repeats,
        "malloc": "tuned" if allocator_tuned() else "default",
        "params_m": count_params(ours) / 1e6,
        "gmacs": macs / 1e9,
        "flops_per_image_g": flops_per_image / 1e9,
        "matmul_peak_gflops": peak / 1e9,
        "matmul_peak_dtype": str(peak_dtype).replace("torch.", ""),
        "memory_method": mem_method,
        "results": results,
    }


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    import platform

    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def format_report(report: dict[str, Any]) -> str:
    """The human table: one row per contestant, speed-ups of ours over each peer."""
    r = report
    lines = [
        f"{r['model']} {r['mode']}, batch {r['batch_size']}, {r['img_size']}px, {r['device_name']}, "
        f"{r['threads']} threads, torch {r['torch']}"
        + (", channels_last" if r["channels_last"] else "")
        + (", compiled" if r["compile"] else "")
        + (f", amp {r['amp']}" if r["amp"] else "")
        + (", malloc tuned" if r.get("malloc") == "tuned" else ""),
        f"params {r['params_m']:.1f}M, {r['gmacs']:.2f} GMACs/image; matmul peak "
        f"{r['matmul_peak_gflops']:.0f} GFLOP/s ({r['matmul_peak_dtype']}); "
        f"median of {r['repeats']} interleaved rounds",
        f"{'':<12}{'images/s':>10}{'batch-1 ms':>12}{'peak MiB':>10}{'% of peak':>10}{'max|diff|':>11}"
        f"{'ours x':>8}{'lat x':>7}",
    ]
    for res in r["results"]:
        lat = f"{res['latency_ms']:.1f}" if res["latency_ms"] is not None else "-"
        sp = f"{res['ours_speedup']:.2f}" if "ours_speedup" in res else "-"
        lsp = f"{res['ours_latency_speedup']:.2f}" if "ours_latency_speedup" in res else "-"
        lines.append(
            f"{res['name']:<12}{res['images_per_s']:>10.2f}{lat:>12}{res['peak_memory_mb']:>10.0f}"
            f"{100 * res['fraction_of_matmul_peak']:>9.0f}%"
            f"{res['max_abs_diff_vs_ours']:>11.1e}{sp:>8}{lsp:>7}"
        )
    lines.append(f"ours: {r['results'][0]['note']}")
    lines.append(
        "'ours x' = median over rounds of (peer time / our time); 'lat x' the same at batch 1. "
        f"Memory: {r['memory_method']}. "
        + ("FLOPs: 2 x MACs x 3 (forward + backward)." if r["mode"] == "train" else "FLOPs: 2 x MACs.")
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Deployment backends: the same weights in PyTorch, onnxruntime and OpenVINO, timed interleaved.

BACKENDS = ("torch", "torch-bf16", "onnxruntime", "openvino", "openvino-bf16", "openvino-int8")
_BACKEND_EXPORT = {  # backend -> (format, precision) of the file it runs
    "onnxruntime": ("onnx", "fp32"),
    "openvino": ("openvino", "fp32"),
    "openvino-bf16": ("openvino", "bf16"),
    "openvino-int8": ("openvino", "int8"),
}


def parse_backends(spec: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``torch,onnxruntime,...`` -> a tuple, "torch" first (every ratio is against it)."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    for b in items:
        if b not in BACKENDS:
            raise UserError(f"unknown backend {b!r} for --backend; choose from {', '.join(BACKENDS)}")
    return ("torch", *dict.fromkeys(b for b in items if b != "torch"))


def _runtime_versions(backends: tuple[str, ...]) -> dict[str, str]:
    versions = {"torch": torch.__version__}
    with contextlib.suppress(ImportError):
        if "onnxruntime" in backends:
            import onnxruntime

            versions["onnxruntime"] = onnxruntime.__version__
    with contextlib.suppress(ImportError):
        if any(b.startswith("openvino") for b in backends):
            import openvino

            versions["openvino"] = openvino.get_version().split("-")[0]
    return versions


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

    ``torch`` is our fastest fp32 PyTorch (``fuse_for_inference``), the reference of every ratio;
    ``torch-bf16`` the plain model under bf16 autocast; the others run files exported (and verified) by
    ``convnext export`` into a temporary folder. int8 calibrates on ``calibration`` (a folder), else on the
    run's training data when ``weights`` is a run, else on random inputs (the timing holds; the accuracy of
    such a file means nothing). ``precision`` in each result is what the backend really ran.
    """
    import tempfile
    from pathlib import Path

    from .device import cpu_features, cpu_features_line, cpu_has_int8_dot, cpu_has_native_bf16
    from .export.calibration import load_calibration
    from .export.core import OV_RUN_PRECISION, check_packages, plain_copy, write_verified
    from .inference.backends import ExportMeta, TorchRunner, open_exported, relative_diff

    say = progress or (lambda _msg: None)
    chosen = parse_backends(backends)
    if repeats < 1 or batch_size < 1:
        raise UserError("--repeats and --batch-size must be >= 1")
    for b in chosen:
        if b in _BACKEND_EXPORT:
            check_packages(*_BACKEND_EXPORT[b])

    if weights:
        from .inference.backends import is_exported
        from .inference.loading import load_for_inference

        if is_exported(weights):
            raise UserError(f"--backend needs PyTorch weights to export from, not the exported {weights}")

        loaded = load_for_inference(weights, model, img_size=img_size)
        net, data, arch, names = loaded.model, loaded.data, loaded.arch, loaded.class_names
        from_run = loaded.run_dir is not None or loaded.info.format == "convnext-train"
        source = loaded.checkpoint
    else:
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
        from .data.config import DataConfig

        data, arch, names, from_run, source = DataConfig(), model, None, False, f"random {model}"
        if img_size is not None:
            data.img_size = int(img_size)
    if data.img_size < 32:
        raise UserError("--img-size must be >= 32")
    size = int(data.img_size)
    net = net.eval()
    plain = plain_copy(net)

    calib = None
    calib_note = ""
    if "openvino-int8" in chosen:
        if calibration or from_run:
            calib = load_calibration(calibration, data, run_data=from_run, where=str(weights)).images
            calib_note = f"int8 calibrated on {len(calib)} images"
        else:
            g = torch.Generator().manual_seed(0)
            calib = torch.randn(32, 3, size, size, generator=g)
            calib_note = "int8 calibrated on 32 random inputs (speed only: pass --calibration for accuracy)"

    runners: dict[str, Any] = {}
    notes: list[str] = [n for n in [calib_note] if n]
    ov_cache: dict[str, Any] = {}  # one OpenVINO conversion for fp32, bf16 and int8
    with tempfile.TemporaryDirectory(prefix="convnext-bench-") as tmp:
        for b in chosen:
            if b == "torch":
                runners[b] = TorchRunner(net, data, arch=arch, class_names=names, fuse=True, source=source)
            elif b == "torch-bf16":
                runners[b] = TorchRunner(plain, data, arch=arch, class_names=names, amp=torch.bfloat16)
            else:
                fmt, precision = _BACKEND_EXPORT[b]
                say(f"exporting for {b}")
                meta = ExportMeta(arch, getattr(net, "num_classes", 0), names, data, fmt, precision)
                meta.inference_precision = OV_RUN_PRECISION[precision]
                target = Path(tmp) / f"{b}{'.onnx' if fmt == 'onnx' else '.xml'}"
                images = calib if precision == "int8" else None
                write_verified(plain, meta, target, images=images, ov_cache=ov_cache)
                runners[b] = open_exported(target)

        x = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(1))
        x1 = x[:1].clone()
        with torch.inference_mode():
            ref = plain(x[:2])
        diffs = {b: relative_diff(r(x[:2]), ref) for b, r in runners.items()}

        say("warm-up")
        for r in runners.values():
            for _ in range(max(warmup, 1)):
                r(x)
                if latency:
                    r(x1)
        gemm, gemm_flops = matmul_peak_step(torch.device("cpu"), torch.float32)
        gemm()
        times: dict[str, list[float]] = {b: [] for b in runners}
        lat: dict[str, list[float]] = {b: [] for b in runners}
        gemm_times: list[float] = []
        cpu = torch.device("cpu")
        for i in range(repeats):
            say(f"round {i + 1}/{repeats}")
            gemm_times.append(_time(gemm, cpu))
            for b, r in runners.items():  # round-robin: every backend sees the same machine state
                times[b].append(_time(lambda r=r: r(x), cpu))
            if latency:
                for _ in range(3):
                    for b, r in runners.items():
                        lat[b].append(_time(lambda r=r: r(x1), cpu))

        results = []
        for b, r in runners.items():
            res = {
                "backend": b,
                "precision": r.precision,
                "images_per_s": statistics.median(batch_size / t for t in times[b]),
                "images_per_s_rounds": [batch_size / t for t in times[b]],
                "latency_ms": statistics.median(lat[b]) * 1e3 if latency else None,
                "speedup_vs_torch": statistics.median(t0 / t for t0, t in zip(times["torch"], times[b])),
                "latency_speedup_vs_torch": (
                    statistics.median(t0 / t for t0, t in zip(lat["torch"], lat[b])) if latency else None
                ),
                "max_rel_diff_vs_torch": diffs[b],
            }
            results.append(res)
        runners.clear()  # release the sessions before the temporary files go

    features = cpu_features()
    if any(b.startswith("openvino-int8") for b in chosen) and not cpu_has_int8_dot():
        notes.append("no VNNI/AMX on this CPU: int8 runs without int8 dot-product instructions")
    if "torch-bf16" in chosen and not cpu_has_native_bf16():
        notes.append("no native bf16 on this CPU: bf16 is emulated (slower than fp32)")
    return {
        "mode": "backends",
        "model": arch,
        "weights": source,
        "batch_size": batch_size,
        "img_size": size,
        "device_name": _device_name(torch.device("cpu")),
        "cpu_features": features,
        "cpu_features_line": cpu_features_line(),
        "threads": torch.get_num_threads(),
        "versions": _runtime_versions(chosen),
        "repeats": repeats,
        "matmul_peak_gflops": gemm_flops / statistics.median(gemm_times) / 1e9,
        "results": results,
        "notes": notes,
    }


def format_backend_report(report: dict[str, Any]) -> str:
    """The human table: one row per backend, ratios against our fp32 PyTorch."""
    r = report
    versions = ", ".join(f"{k} {v}" for k, v in r["versions"].items())
    lines = [
        f"{r['model']} ({r['weights']}), batch {r['batch_size']}, {r['img_size']}px, {r['device_name']}, "
        f"{r['threads']} threads; {versions}",
        f"CPU: {r['cpu_features_line']}; fp32 matmul peak {r['matmul_peak_gflops']:.0f} GFLOP/s; "
        f"median of {r['repeats']} interleaved rounds",
        f"{'backend':<15}{'images/s':>10}{'batch-1 ms':>12}{'x torch':>9}{'lat x':>7}{'rel diff':>10}"
        "  ran as",
    ]
    for res in r["results"]:
        lat = f"{res['latency_ms']:.1f}" if res["latency_ms"] is not None else "-"
        lsp = f"{res['latency_speedup_vs_torch']:.2f}" if res["latency_speedup_vs_torch"] is not None else "-"
        lines.append(
            f"{res['backend']:<15}{res['images_per_s']:>10.2f}{lat:>12}{res['speedup_vs_torch']:>9.2f}"
            f"{lsp:>7}{res['max_rel_diff_vs_torch']:>10.1e}  {res['precision']}"
        )
    lines.append(
        "'x torch' = median over rounds of (torch time / backend time), torch = our fused fp32 PyTorch; "
        "'lat x' the same at batch 1; 'rel diff' = max |logits - plain fp32 PyTorch| / max |logits|."
    )
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)
