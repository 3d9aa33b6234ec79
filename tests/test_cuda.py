"""GPU checks (`make gpu-check`): mixed-precision training steps with channels_last and torch.compile, a
1-process NCCL run, export parity on CUDA, and LayerNorm kept in fp32 under fp16 autocast.

Every test here is marked ``cuda`` and skips cleanly without a CUDA device (CI and CPU-only machines).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from convnext.models import build_model

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check)"),
]

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs" / "quickstart_digits.yaml"


@pytest.fixture
def exact_fp32() -> object:
    """Full fp32 on the GPU: TF32 convolutions and matmuls (cuDNN's default) round to 10 mantissa bits."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield None
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_mixed_precision_training_step_channels_last_compiled(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = build_model("convnext_atto", num_classes=10).to(dev).to(memory_format=torch.channels_last)
    eager_loss = None
    x = torch.randn(16, 3, 64, 64, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,), device=dev)
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        eager_loss = F.cross_entropy(model(x).float(), y).item()
    compiled = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(3):
        with torch.autocast("cuda", dtype=dtype):
            loss = F.cross_entropy(compiled(x).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert abs(losses[0] - eager_loss) <= 0.05 * abs(eager_loss)  # compiled = eager on the first step
    assert losses[-1] < losses[0]  # it learns the batch
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_layernorm_stays_fp32_under_fp16_autocast() -> None:
    """Activations of a few hundred square to more than fp16's 65504: the official channels-first formula
    (``(x - u).pow(2).mean(1)`` in the autocast dtype) overflows and the network outputs constants; ours
    runs F.layer_norm, which autocast keeps in fp32."""
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model("convnext_atto", num_classes=10).to(dev).eval()
    x = 400.0 * torch.randn(4, 3, 64, 64, device=dev)  # large activations after the stem
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cuda", dtype=torch.float16):
            out = model(x)
            h = torch.randn(2, 8, 8, 96, device=dev, dtype=torch.float16) * 300
            assert F.layer_norm(h, (96,)).dtype == torch.float32  # autocast's fp32 list
            u = h.mean(-1, keepdim=True)
            naive = (h - u) / torch.sqrt((h - u).pow(2).mean(-1, keepdim=True) + 1e-6)  # the overflow
    assert torch.isfinite(out).all() and out.float().std() > 0
    assert (out.float() - ref).abs().max() <= 5e-2 * ref.abs().max()
    assert torch.isinf((h - u).pow(2)).any() and not torch.isfinite(naive).all()  # what we avoid


def test_one_process_nccl_training_run(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
        "-m", "convnext.cli.main", "train", "--config", str(QUICK), "epochs=1", "train.device=cuda",
        "train.amp=bf16", "train.channels_last=true", "train.progress=false", "run.export_samples=0",
        f"run.dir={tmp_path}",
    ]  # fmt: skip
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    from convnext.engine.checkpoint import load_train_checkpoint

    ckpt = load_train_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert ckpt["step"] > 0 and ckpt["world_size"] == 1


def test_export_parity_on_cuda(tmp_path: Path, exact_fp32: object) -> None:
    pytest.importorskip("onnxruntime")
    from convnext.data.config import DataConfig
    from convnext.export.core import plain_copy, write_verified
    from convnext.inference.backends import ExportMeta, open_exported, relative_diff

    torch.manual_seed(0)
    model = build_model("convnext_atto", num_classes=10, layer_scale_init_value=1.0).eval()
    meta = ExportMeta("convnext_atto", 10, None, DataConfig(img_size=64), "onnx", "fp32")
    write_verified(plain_copy(model), meta, tmp_path / "m.onnx")
    runner = open_exported(tmp_path / "m.onnx", device="cuda")  # CUDA provider when onnxruntime-gpu is in
    gpu = model.cuda()
    for b in (1, 4, 32):
        x = torch.randn(b, 3, 64, 64, device="cuda")
        with torch.no_grad():
            ref = gpu(x)
        out = runner(x)
        assert out.device == x.device and relative_diff(out, ref) <= 1e-5, b
