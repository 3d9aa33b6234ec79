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
    has_chunked = (
        amp is None
        and not compile
        and use_chunked_mlp(x)
        and any(hasattr(m, "chunked") for m in ours.modules())
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
            entries.append(("ours", ours, CHUNKED_NOTE if fuse and has_chunked else "plain model"))
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
