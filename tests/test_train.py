"""The training engine: the recipe's schedule and parameter groups, learning, the quickstart, divergence."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from convnext import create_model
from convnext.engine.config import load_config
from convnext.engine.optim import build_optimizer, param_groups
from convnext.engine.schedule import LrSchedule, peak_lrs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = {"depths": (1, 1, 2, 1), "dims": (8, 16, 32, 64)}


pytestmark = pytest.mark.usefixtures("one_thread")


def _adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    layer_decay: float | None = None,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """The recipe's AdamW (betas 0.9/0.999, eps 1e-8) on CPU."""
    return build_optimizer(
        model,
        name="adamw",
        lr=lr,
        weight_decay=weight_decay,
        betas=(0.9, 0.999),
        eps=1e-8,
        momentum=0.9,
        layer_decay=layer_decay,
        fused=fused,
        device=torch.device("cpu"),
    )


def _group_of(opt: torch.optim.Optimizer, model: nn.Module, name: str) -> dict:
    p = dict(model.named_parameters())[name]
    return next(g for g in opt.param_groups if any(q is p for q in g["params"]))


def test_schedule_matches_recipe_closed_form() -> None:
    """ConvNeXt-T recipe, 10 steps/epoch: lr at warmup start/middle/end, cosine middle and the last step."""
    cfg = load_config(CONFIGS / "convnext_tiny_in1k.yaml", check_paths=False)
    model = create_model("convnext_atto", num_classes=10)
    eff_batch = 1024  # e.g. 128 x 8 GPUs x 1: optim.lr (at 4096) scales to a quarter
    lr = cfg.optim.lr * eff_batch / cfg.optim.lr_base_batch
    assert lr == pytest.approx(1e-3)
    opt = _adamw(model, lr=lr, weight_decay=cfg.optim.weight_decay)
    spe = 10
    total, warm = cfg.epochs * spe, int(cfg.schedule.warmup_epochs * spe)
    sched = LrSchedule(total_steps=total, warmup_steps=warm, base_lr=lr, min_lr=cfg.schedule.min_lr)
    peaks = peak_lrs(opt)

    def closed_form(k: int) -> float:
        if k < warm:
            return lr * k / warm
        t = (k - warm) / (total - warm)
        return 1e-6 + 0.5 * (lr - 1e-6) * (1 + math.cos(math.pi * t))

    checkpoints = {0: 0.0, warm // 2: lr / 2, warm: lr, (warm + total) // 2: None, total - 1: None}
    seen = {}
    for k in range(total):
        sched.apply(opt, peaks, k)  # stateless: the lr is a function of the step number
        if k in checkpoints:
            seen[k] = [g["lr"] for g in opt.param_groups]
        opt.step()
    for k, expected in checkpoints.items():
        want = closed_form(k) if expected is None else expected
        assert seen[k] == pytest.approx([want] * len(seen[k]), rel=1e-12, abs=1e-15), k
    assert seen[(warm + total) // 2][0] == pytest.approx((lr + 1e-6) / 2)  # cosine midpoint
    assert seen[total - 1][0] == pytest.approx(1e-6, rel=1e-3)  # ends at min_lr
    decayed = {g["weight_decay"] for g in opt.param_groups}
    assert decayed == {0.0, 0.05}  # weight decay itself is constant, as in the paper


@pytest.mark.parametrize("arch", ["convnext_atto", "convnextv2_atto"])
def test_no_weight_decay_on_norms_biases_gamma_grn(arch: str) -> None:
    model = create_model(arch, num_classes=10)
    opt = _adamw(model, lr=1e-3)
    names = dict(model.named_parameters())
    for name in names:
        wd = _group_of(opt, model, name)["weight_decay"]
        leaf = name.rsplit(".", 1)[-1]
        no_decay = leaf in ("bias", "gamma", "beta") or names[name].ndim == 1
        assert wd == (0.0 if no_decay else 0.05), name
    assert _group_of(opt, model, "stages.0.0.pwconv1.weight")["weight_decay"] == 0.05
    assert _group_of(opt, model, "downsample_layers.0.1.weight")["weight_decay"] == 0.0  # stem LayerNorm
    if arch.startswith("convnextv2"):
        assert _group_of(opt, model, "stages.0.0.grn.gamma")["weight_decay"] == 0.0  # (1, 1, 1, C): not 1-D
    else:
        assert _group_of(opt, model, "stages.0.0.gamma")["weight_decay"] == 0.0


def test_layer_decay_uses_official_convnext_layer_ids() -> None:
    """stem 0, stage 0 -> 1, stage 1 -> 2, stage 2 in threes from 3, stage 3 -> 12, head 13 (scale 1)."""
    # convnext_base depths (27 blocks in stage 2: the full 12 groups), narrow so that it builds fast
    model = create_model("convnext_base", num_classes=10, dims=(8, 16, 32, 64))
    d = 0.8
    groups = {n: g for g in param_groups(model, 0.05, d) for n in g["names"]}
    expect = {
        "downsample_layers.0.0.weight": 0,
        "stages.0.2.dwconv.weight": 1,
        "downsample_layers.1.1.weight": 2,
        "stages.1.0.pwconv1.weight": 2,
        "downsample_layers.2.1.weight": 3,
        "stages.2.0.gamma": 3,
        "stages.2.5.pwconv2.weight": 4,
        "stages.2.26.dwconv.bias": 11,
        "downsample_layers.3.1.weight": 12,
        "stages.3.2.pwconv2.weight": 12,
        "norm.weight": 13,
        "head.weight": 13,
    }
    for name, layer in expect.items():
        assert groups[name]["layer_id"] == layer, name
        assert groups[name]["lr_scale"] == pytest.approx(d ** (13 - layer)), name
    opt = _adamw(model, lr=1e-3, layer_decay=d, fused=False)
    assert _group_of(opt, model, "head.weight")["lr"] == pytest.approx(1e-3)
    assert _group_of(opt, model, "downsample_layers.0.0.weight")["lr"] == pytest.approx(1e-3 * d**13)


def test_overfits_a_small_batch() -> None:
    """The recipe's optimizer and loss drive a tiny ConvNeXt to 100% on one fixed batch (no augmentation)."""
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=4, **TINY)
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 4
    opt = _adamw(model, lr=3e-3)
    sched, peaks = LrSchedule(total_steps=40, warmup_steps=4, base_lr=5e-3, min_lr=1e-5), peak_lrs(opt)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    for step in range(40):
        sched.apply(opt, peaks, step)
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean().item() == 1.0
    assert loss.item() < 0.7  # label smoothing 0.1 over 4 classes floors the loss near 0.38


def test_quickstart_learns_the_digits_on_cpu(tmp_path: Path) -> None:
    """The README's first command: >= 95% top-1 on the held-out digits, on CPU, through the real CLI."""
    from convnext.cli.main import main
    from convnext.engine.logging import read_metrics

    start = time.perf_counter()
    code = main(
        [
            "train",
            "--config",
            str(CONFIGS / "quickstart_digits.yaml"),
            f"run.dir={tmp_path}",
            "train.progress=false",
        ]
    )
    elapsed = time.perf_counter() - start
    assert code == 0
    last = read_metrics(tmp_path)[-1]
    print(f"quickstart: {last['epoch']} epochs, val top-1 {last['val_top1']:.2f}% in {elapsed:.0f} s")
    assert last["val_top1"] >= 95.0
    # curves.png compares training and validation loss on one basis: both with the recipe's label smoothing
    assert last["val_loss_smoothed"] > last["val_loss"] > 0
    for name in ("config.yaml", "curves.png", "checkpoints/last.pth", "checkpoints/best.pth"):
        assert (tmp_path / name).exists(), name
    samples = sorted((tmp_path / "samples").glob("*.png"))
    assert len(samples) == 8  # real files for `convnext predict` in the README


ALLOCATOR_PROBE = """
import resource, torch
import convnext.engine.train  # the libraries a training process has loaded shape its heap and mappings
from convnext.engine.allocator import tune_cpu_allocator

def faults():
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.ones(16 << 20)  # a 64 MiB activation, freed at once, as a training step does hundreds of
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0

faults()
before = faults()
tuned = tune_cpu_allocator()
faults()
print(before, tuned, faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
@pytest.mark.parametrize("opt_out", [False, True])
def test_cpu_training_reuses_the_heap_instead_of_page_faulting_every_step(opt_out: bool) -> None:
    # In a fresh process: the setting is process-wide and cannot be undone.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    if opt_out:
        env["CONVNEXT_MALLOC"] = "default"
    out = subprocess.run(
        [sys.executable, "-c", ALLOCATOR_PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    before, tuned, after = int(out[0]), out[1] == "True", int(out[2])
    if before < 5 * 4096:  # glibc default: every 64 MiB block is fresh 4 KiB mmap pages
        pytest.skip(f"this kernel faults fresh mmaps in huge pages ({before} faults); nothing to measure")
    if opt_out:
        assert not tuned and after >= 5 * 4096
    else:
        assert tuned and after < before / 100


def test_model_chunked_mlp_key_switches_every_block() -> None:
    from convnext.engine.train import build_model
    from convnext.models import Block

    for value in (True, False):
        overrides = ["model.name=convnext_atto", f"model.chunked_mlp={str(value).lower()}"]
        cfg = load_config(None, overrides, check_paths=False)
        blocks = [m for m in build_model(cfg, 10).modules() if isinstance(m, Block)]
        assert blocks and all(b.chunked is value for b in blocks)
