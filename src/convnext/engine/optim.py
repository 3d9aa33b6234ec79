"""Optimizer with the paper's parameter groups: no weight decay on norms, biases, layer scale and GRN, and
optional layer-wise lr decay with the official ConvNeXt layer ids, generalised to every depth."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import UserError

NUM_LAYER_GROUPS = 12  # the official split of a [3, 3, 27, 3] ConvNeXt: stem 0, body 1..12, head 13


def num_layers_hierarchical(depths: tuple[int, ...] | list[int]) -> int:
    """Body layers of a four-stage ConvNeXt: stage 0, stage 1, stage 2 in groups of three blocks, stage 3.

    The official code (optim_factory.get_num_layer_for_convnext) hard-codes 12 for the 27-block stage 2 of
    S/B/L/XL and refuses layer decay for T; 9 groups of three blocks + 3 gives the same 12 there, and for
    T's 9 blocks 3 + 3 = 6, so that every depth gets consecutive ids (no jump between neighbours).
    """
    return 3 + math.ceil(depths[2] / 3)


def layer_id_hierarchical(name: str, depths: tuple[int, ...] | list[int] = (3, 3, 27, 3)) -> int:
    """Layer id of a parameter of a four-stage ConvNeXt (V1 or V2): stem 0, stage 0 -> 1, downsampling 1 and
    stage 1 -> 2, downsampling 2 and stage 2 in groups of three blocks from 3, downsampling 3 and stage 3
    -> L, final norm and head L + 1 (L = :func:`num_layers_hierarchical`, 12 for [3, 3, 27, 3]: exactly
    the official ids)."""
    last = num_layers_hierarchical(depths)
    parts = name.split(".")
    if parts[0] == "downsample_layers":
        return {0: 0, 1: 2, 2: 3, 3: last}[int(parts[1])]
    if parts[0] == "stages":
        stage, block = int(parts[1]), int(parts[2])
        if stage < 2:
            return stage + 1
        if stage == 2:
            return 3 + block // 3
        return last
    return last + 1


def layer_id_isotropic(name: str, depth: int) -> int:
    """Isotropic ConvNeXt, BEiT-style: stem 0, block i -> i + 1, norm and head depth + 1."""
    parts = name.split(".")
    if parts[0] == "stem":
        return 0
    if parts[0] == "blocks":
        return int(parts[1]) + 1
    return depth + 1


def layer_ids(model: nn.Module) -> tuple[Callable[[str], int], int]:
    """The layer-id function of ``model``'s parameters and the head's id (the largest); one sentence for a
    model whose layers have no defined order."""
    stages = getattr(model, "stages", None)
    if isinstance(stages, nn.ModuleList) and len(stages) == 4 and hasattr(model, "downsample_layers"):
        depths = tuple(len(s) for s in stages)
        return (lambda n: layer_id_hierarchical(n, depths)), num_layers_hierarchical(depths) + 1
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and hasattr(model, "stem"):
        depth = len(blocks)
        return (lambda n: layer_id_isotropic(n, depth)), depth + 1
    raise UserError(
        f"config key optim.layer_decay: {type(model).__name__} has no layer order for layer-wise lr decay; "
        "set optim.layer_decay=null"
    )


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
