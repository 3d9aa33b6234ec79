"""DDP on CPU (gloo) takes our models without the "Grad strides do not match bucket view strides" warning.

DDP lays each gradient bucket out like its parameter and warns on every rank when a gradient's strides
differ: the depthwise conv's weight gradient comes out in channels_last strides, so the model stores that
weight in the same strides (the same bytes: its channel-in axis has size 1).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convnext import create_model

SCRIPT = """
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from convnext import create_model

dist.init_process_group("gloo")
torch.manual_seed(0)
for name in ("convnext_atto", "convnextv2_atto", "convnext_isotropic_small"):
    options = {"depth": 2, "dim": 32} if "isotropic" in name else {"dims": (8, 16, 32, 64)}
    model = DDP(create_model(name, num_classes=4, **options))
    opt = torch.optim.AdamW(model.parameters())
    for _ in range(2):
        loss = model(torch.randn(2, 3, 32, 32)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
print(f"rank {dist.get_rank()} ok", flush=True)
dist.destroy_process_group()
"""


@pytest.mark.parametrize("name", ["convnext_atto", "convnextv2_atto", "convnext_isotropic_small"])
def test_every_gradient_has_its_parameters_strides(name: str) -> None:
    # What DDP checks, in process: a fast proxy for the launch below.
    options = {"depth": 2, "dim": 32} if "isotropic" in name else {}
    model = create_model(name, num_classes=4, **options)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad.stride() != p.stride()] == []


@pytest.mark.slow  # the per-gradient stride test checks the cause in CI
def test_two_process_gloo_prints_no_grad_stride_warning(tmp_path: Path) -> None:
    script = tmp_path / "ddp_step.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "rank 0 ok" in out and "rank 1 ok" in out
    assert "Grad strides do not match" not in out


def test_state_dict_still_saves_as_safetensors_and_loads_back(tmp_path: Path) -> None:
    # safetensors refuses non-contiguous tensors; the dwconv weight's strides differ from the default ones
    # only on its size-1 axis, so it still counts as contiguous (and is the same bytes).
    from safetensors.torch import load_file, save_file

    from convnext.cli.main import main

    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=4)
    w = model.stages[0][0].dwconv.weight
    assert w.stride() == (49, 1, 7, 1) and w.is_contiguous()
    save_file(model.state_dict(), tmp_path / "direct.safetensors")
    torch.save({"model": model.state_dict()}, tmp_path / "ckpt.pth")
    assert main(["convert", str(tmp_path / "ckpt.pth"), str(tmp_path / "converted.safetensors")]) == 0
    for name in ("direct", "converted"):
        loaded = create_model("convnext_atto", pretrained=str(tmp_path / f"{name}.safetensors"))
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
        assert load_file(tmp_path / f"{name}.safetensors").keys() == model.state_dict().keys()
        assert loaded.stages[0][0].dwconv.weight.stride() == (49, 1, 7, 1)  # load_state_dict copies in place
