"""Ours against timm's and torchvision's ConvNeXt, measured fairly on a noisy machine.

Fair means: the same architecture with the same weights (ours are copied into the peers and the outputs
are checked equal), timed interleaved in one process (ours, timm, torchvision, ours, ...), so that
whatever else the machine is doing hits every contestant alike; speed-ups are ratios of the median times
(so they agree with the medians printed beside them), with the lowest and highest per-round ratio beside.
A peer without the architecture (torchvision has no atto) is left out with a note. The machine's matmul
peak is timed in the same rounds (timing.py).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..device import AMP_DTYPES, amp_dtype, autocast, resolve_device
from ..engine.allocator import allocator_tuned, tune_cpu_allocator
from ..errors import UserError
from ..models import Block, build_model, get_variant
from ..models.chunked_mlp import set_chunked_mlp, use_chunked_mlp
from ..models.fuse import fuse_for_inference
from ..models.profile import count_macs, count_params
from .peers import check_peers, peer_models
from .timing import (
    Rounds,
    device_name,
    interleaved_rounds,
    matmul_peak_step,
    measure_memory,
    ratio_of_medians,
    ratio_spread,
)

CHUNKED_NOTE = "chunked MLP in forward and backward (models/chunked_mlp.py), channels_last inside"
SMALL_NOTE = "the plain ops: inputs this small are faster unchunked (models/chunked_mlp.py)"
FUSED_NOTE = "fuse_for_inference (folded layer scale, chunked MLP, channels_last)"


@dataclass
class Spec:
    """What to time: the options of :func:`run_benchmark`."""

    model: str
    batch_size: int
    img_size: int
    mode: str
    channels_last: bool
    compile: bool
    amp: str | None
    fuse: bool
    latency: bool


@dataclass
class Contestant:
    name: str
    model: nn.Module
    step: Callable[[], Any] = field(repr=False)
    latency_step: Callable[[], Any] | None = field(default=None, repr=False)
    note: str = ""


def adamw(params: Any, device: torch.device) -> tuple[torch.optim.Optimizer, str]:
    """AdamW with the fused kernel where this torch has it for the device (one kernel for all params)."""
    try:
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, fused=True), "fused"
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, foreach=True), "foreach"


def make_steps(
    model: nn.Module, x: Tensor, x1: Tensor, targets: Tensor, mode: str, device: torch.device, amp: str | None
) -> tuple[Callable[[], Any], Callable[[], Any] | None, str]:
    """The timed call (a forward, or a full training step with AdamW), its batch-1 twin, and a note."""
    dtype = AMP_DTYPES[amp or "none"]

    def infer(inp: Tensor) -> Callable[[], Any]:
        def run() -> Tensor:
            with torch.inference_mode(), autocast(device, dtype):
                return model(inp)

        return run

    if mode == "infer":
        model.eval()
        return infer(x), infer(x1), ""
    model.train()
    opt, kind = adamw(model.parameters(), device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def train_step() -> Tensor:
        with autocast(device, dtype):
            loss = F.cross_entropy(model(x), targets)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    return train_step, None, f"AdamW {kind}"


def _check(
    spec: Spec, repeats: int, device: str, compare: tuple[str, ...]
) -> tuple[torch.device, tuple[str, ...]]:
    """The device and the peers, or one sentence naming what is wrong."""
    if spec.mode not in ("infer", "train"):
        raise UserError(f"--mode must be infer or train, not {spec.mode!r}")
    if repeats < 1 or spec.batch_size < 1:
        raise UserError("--repeats and --batch-size must be >= 1")
    dev = resolve_device(device)
    amp_dtype(spec.amp, dev)  # fp16 needs CUDA; bf16 on a CPU without it is noted
    try:
        get_variant(spec.model)
    except ValueError as e:
        raise UserError(str(e)) from None
    check_img_size(spec.img_size, spec.model)
    return dev, check_peers(compare)


def check_img_size(img_size: int, name: str, model: nn.Module | None = None) -> None:
    """Refuse an input smaller than the model's total stride (its ``reduction``), which would fail deep
    inside the convolutions; the model is built on the meta device when not given (no memory, instant)."""
    if model is None:
        with torch.device("meta"):
            model = build_model(name)
    smallest = int(model.reduction)
    if img_size < smallest:
        raise UserError(
            f"--img-size {img_size} is below the {smallest} px {name} needs (it downsamples {smallest}x)"
        )


def build_ours(name: str, device: torch.device) -> nn.Module:
    """Our model with non-trivial layer scales and biases where its blocks have layer scale (V1), so weight
    copying and folding really count."""
    ours = build_model(name).to(device)
    if any(isinstance(m, Block) and m.gamma is not None for m in ours.modules()):
        with torch.no_grad():
            for pname, p in ours.named_parameters():
                if pname.endswith("gamma") or pname.endswith("bias"):
                    p.uniform_(-0.5, 0.5)
    return ours


def chunked_in_step(spec: Spec, ours: nn.Module, x: Tensor) -> bool:
    """What the model's own switch will decide inside the timed step (autocast and compile are set there).

    The rule looks at a block's input: the first tap's feature map (stage 1, or isotropic's only one)."""
    stride = int(ours.feature_info[0]["reduction"])
    size = spec.img_size // stride
    block_in = x.new_empty(1).expand(spec.batch_size, 1, size, size)
    if spec.compile or not any(getattr(m, "chunked", False) for m in ours.modules()):
        return False
    with autocast(x.device, AMP_DTYPES.get(spec.amp or "none")):  # CPU bf16: the blocks' bf16 loop
        return use_chunked_mlp(block_in, grad=spec.mode == "train")


def _entries(
    spec: Spec, ours: nn.Module, peers: dict[str, nn.Module], check_x: Tensor, has_chunked: bool
) -> tuple[list[tuple[str, nn.Module, str]], dict[str, float]]:
    """(name, model, note) of every contestant, and each one's max |diff| from our plain ops on one batch."""
    with torch.inference_mode():
        ours.eval()
        ref = set_chunked_mlp(ours, False)(check_x).float()  # the plain ops are the reference
        set_chunked_mlp(ours, spec.fuse)
        entries: list[tuple[str, nn.Module, str]] = []
        # Fused: fp32 eager only (its GEMMs write fp32 buffers; under --compile inductor does its own fusion).
        if spec.mode == "infer" and spec.fuse and spec.amp is None and not spec.compile:
            entries.append(("ours", fuse_for_inference(ours), FUSED_NOTE))
        else:
            note = CHUNKED_NOTE if has_chunked else f"{SMALL_NOTE}, channels_last inside"
            entries.append(("ours", ours, note if spec.fuse else "plain model"))
        for p, pm in peers.items():
            entries.append((p, pm.eval(), ""))
        max_diff = {name: (m(check_x).float() - ref).abs().max().item() for name, m, _ in entries}
    return entries, max_diff


def _contestants(
    spec: Spec,
    entries: list[tuple[str, nn.Module, str]],
    x: Tensor,
    x1: Tensor,
    targets: Tensor,
    device: torch.device,
) -> list[Contestant]:
    """Each entry in the asked layout (channels_last, compiled) with its timed steps."""
    if spec.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        x1 = x1.contiguous(memory_format=torch.channels_last)
    out = []
    for name, m, note in entries:
        if spec.channels_last:
            m = m.to(memory_format=torch.channels_last)
        if spec.compile:
            m = torch.compile(m)
        step, lat, opt_note = make_steps(m, x, x1, targets, spec.mode, device, spec.amp)
        note = "; ".join(filter(None, [note, opt_note]))
        out.append(Contestant(name, m, step, lat if spec.latency else None, note))
    return out


def _warm_up(contestants: list[Contestant], gemm: Callable[[], Any], warmup: int, compile: bool) -> None:
    for c in contestants:
        for _ in range(max(warmup, 2 if compile else 1)):
            c.step()
            if c.latency_step is not None:
                c.latency_step()
    gemm()


def _results(
    contestants: list[Contestant],
    rounds: Rounds,
    memory: dict[str, float],
    max_diff: dict[str, float],
    batch_size: int,
    flops_per_image: float,
    peak: float,
) -> list[dict[str, Any]]:
    """One row per contestant: medians, and the speed-up of ours over each peer as the ratio of the median
    times (the images/s and latencies in the same row), with the per-round spread."""
    results = []
    for c in contestants:
        ips = [batch_size / t for t in rounds.times[c.name]]
        med = batch_size / statistics.median(rounds.times[c.name])
        lat = rounds.latency.get(c.name)
        res = {
            "name": c.name,
            "images_per_s": med,
            "images_per_s_rounds": ips,
            "latency_ms": statistics.median(lat) * 1e3 if lat is not None else None,
            "peak_memory_mb": memory[c.name],
            "max_abs_diff_vs_ours": max_diff[c.name],
            "achieved_gflops": flops_per_image * med / 1e9,
            "fraction_of_matmul_peak": flops_per_image * med / peak,
            "note": c.note,
        }
        if c.name != "ours":
            res["ours_speedup"] = ratio_of_medians(rounds.times[c.name], rounds.times["ours"])
            res["ours_speedup_range"] = ratio_spread(rounds.times[c.name], rounds.times["ours"])
            if lat is not None:
                res["ours_latency_speedup"] = ratio_of_medians(lat, rounds.latency["ours"])
                res["ours_latency_speedup_range"] = ratio_spread(lat, rounds.latency["ours"])
        results.append(res)
    return results


def run_benchmark(
    model: str,
    *,
    batch_size: int = 32,
    img_size: int = 224,
    mode: str = "infer",
    channels_last: bool = False,
    compile: bool = False,
    amp: str | None = None,
    device: str = "auto",
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
    the chunked MLP; ``fuse=False`` times the plain ops instead (the reference). ``device``: auto (CUDA when
    there is one, else CPU), cpu, cuda or cuda:N. Peers run as
    their authors wrote them. ``channels_last`` converts every contestant and the input to that layout.
    ``tuned_malloc`` raises glibc's mmap threshold (engine/allocator.py) after memory is measured and before
    anything is timed: every contestant then runs with the allocator ``convnext train`` uses on CPU.
    """
    say = progress or (lambda _msg: None)
    spec = Spec(model, batch_size, img_size, mode, channels_last, compile, amp, fuse, latency)
    dev, peers = _check(spec, repeats, device, compare)
    torch.manual_seed(0)  # ours, the peers (their init draws too), then the inputs: always the same tensors
    ours = build_ours(model, dev)
    others, skipped = peer_models(ours, model, peers, dev)
    x = torch.randn(batch_size, 3, img_size, img_size, device=dev)
    has_chunked = chunked_in_step(spec, ours, x)
    x1 = torch.randn(1, 3, img_size, img_size, device=dev)
    targets = torch.randint(0, ours.num_classes, (batch_size,), device=dev)

    entries, max_diff = _entries(spec, ours, others, x[:2], has_chunked)  # the same function? before timing
    contestants = _contestants(spec, entries, x, x1, targets, dev)
    peak_dtype = AMP_DTYPES[amp or "none"] or torch.float32
    gemm, gemm_flops = matmul_peak_step(dev, peak_dtype)
    say("warm-up" + (" and compilation" if compile else ""))
    _warm_up(contestants, gemm, warmup, compile)
    memory = {}
    for c in contestants:
        memory[c.name], mem_method = measure_memory(c.step, dev)
    if tuned_malloc and dev.type == "cpu":
        tune_cpu_allocator()
    steps = {c.name: c.step for c in contestants}
    lat_steps = {c.name: c.latency_step for c in contestants if c.latency_step is not None}
    rounds = interleaved_rounds(steps, lat_steps, gemm, dev, repeats, say)

    macs = count_macs(ours, img_size)
    flops_per_image = 2.0 * macs * (3.0 if mode == "train" else 1.0)  # backward ~ 2x forward
    peak = gemm_flops / statistics.median(rounds.gemm)
    results = _results(contestants, rounds, memory, max_diff, batch_size, flops_per_image, peak)
    return {
        "model": model, "mode": mode, "batch_size": batch_size, "img_size": img_size, "device": str(dev),
        "device_name": device_name(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "channels_last": channels_last, "compile": compile, "amp": amp, "repeats": repeats,
        "malloc": "tuned" if allocator_tuned() else "default",
        "params_m": count_params(ours) / 1e6, "gmacs": macs / 1e9, "flops_per_image_g": flops_per_image / 1e9,
        "matmul_peak_gflops": peak / 1e9, "matmul_peak_dtype": str(peak_dtype).replace("torch.", ""),
        "memory_method": mem_method, "results": results, "notes": skipped,
    }  # fmt: skip
