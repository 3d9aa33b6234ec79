"""Optimizer with the paper's parameter groups: no weight decay on norms, biases, layer scale and GRN, and
optional layer-wise lr decay with the official ConvNeXt layer ids, generalised to every depth."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..recipe.layer_ids import layer_ids
from ..recipe.validate import cpu_fused_adamw


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
        layer_of, max_id = layer_ids(model)

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
        fused = device.type == "cuda" or (device.type == "cpu" and cpu_fused_adamw())
    if fused:
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs)
