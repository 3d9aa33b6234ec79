"""Optimizer with the paper's parameter groups: no weight decay on norms, biases, layer scale and GRN, and
optional layer-wise lr decay with the official ConvNeXt layer ids."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

NUM_LAYER_GROUPS = 12  # the official split: stem 0, body 1..12, head 13


def layer_id_hierarchical(name: str) -> int:
    """Official ConvNeXt layer id of a parameter: stem 0, stages 0/1 -> 1/2, stage 2 in groups of three
    blocks (3 + block // 3, capped at 11), stage 3 and its downsampling 12, final norm and head 13."""
    parts = name.split(".")
    if parts[0] == "downsample_layers":
        stage = int(parts[1])
        return {0: 0, 1: 2, 2: 3, 3: NUM_LAYER_GROUPS}[stage]
    if parts[0] == "stages":
        stage, block = int(parts[1]), int(parts[2])
        if stage < 2:
            return stage + 1
        if stage == 2:
            return min(3 + block // 3, NUM_LAYER_GROUPS - 1)
        return NUM_LAYER_GROUPS
    return NUM_LAYER_GROUPS + 1


def layer_id_isotropic(name: str, depth: int) -> int:
    """Isotropic ConvNeXt, BEiT-style: stem 0, block i -> i + 1, norm and head depth + 1."""
    parts = name.split(".")
    if parts[0] == "stem":
        return 0
    if parts[0] == "blocks":
        return int(parts[1]) + 1
    return depth + 1


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Norm weights, biases, layer scale (``gamma``) and GRN ``gamma``/``beta`` are not decayed."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or leaf in ("bias", "gamma", "beta")


def param_groups(
    model: nn.Module, weight_decay: float, layer_decay: float | None = None
) -> list[dict[str, Any]]:
    """Parameter groups with ``weight_decay`` and ``lr_scale`` (layer decay ``d ** (max_id - id)``)."""
    use_ld = layer_decay is not None and layer_decay != 1.0
    if use_ld:
        if hasattr(model, "stages"):
            max_id = NUM_LAYER_GROUPS + 1

            def layer_of(n: str) -> int:
                return layer_id_hierarchical(n)
        else:
            depth = len(model.blocks)
            max_id = depth + 1

            def layer_of(n: str) -> int:
                return layer_id_isotropic(n, depth)

    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not no_weight_decay(name, p)
        lid = layer_of(name) if use_ld else 0
        key = (lid, decay)
        if key not in groups:
            scale = layer_decay ** (max_id - lid) if use_ld else 1.0
            groups[key] = {
                "params": [],
                "names": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": scale,
                "layer_id": lid,
            }
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(
    model: nn.Module,
    *,
    name: str,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    momentum: float,
    layer_decay: float | None,
    fused: bool | None,
    device: torch.device,
) -> torch.optim.Optimizer:
    """AdamW (fused when this torch supports it on ``device``) or SGD over :func:`param_groups`."""
    groups = param_groups(model, weight_decay, layer_decay)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
        g.pop("names")  # optimizer state dicts must stay plain; names are only for inspection
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    kwargs: dict[str, Any] = {"lr": lr, "betas": tuple(betas), "eps": eps}
    if fused is None:
        fused = device.type == "cuda" or (device.type == "cpu" and _cpu_fused_adamw())
    if fused:
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs)


def _cpu_fused_adamw() -> bool:
    """Whether this torch has a fused AdamW kernel for CPU tensors (added in torch 2.4)."""
    if "fused" not in inspect.signature(torch.optim.AdamW).parameters:
        return False
    try:
        p = nn.Parameter(torch.zeros(2))
        opt = torch.optim.AdamW([p], fused=True)
        p.grad = torch.ones(2)
        opt.step()
        return True
    except (RuntimeError, TypeError):
        return False
