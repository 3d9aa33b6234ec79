"""Exponential moving average of the weights, with torch's own AveragedModel (foreach multi-tensor update)."""

from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def build_ema(model: nn.Module, decay: float) -> AveragedModel:
    """EMA over parameters AND buffers (use_buffers=True), so evaluating it needs no BN re-estimation."""
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.requires_grad_(False)
    return ema


def ema_state_dict(ema: AveragedModel) -> dict:
    """The averaged weights under the model's own names (loadable into a bare model)."""
    return {k[len("module.") :]: v for k, v in ema.state_dict().items() if k.startswith("module.")}


def load_ema_state_dict(ema: AveragedModel, state: dict, n_averaged: int) -> None:
    ema.module.load_state_dict(state)
    ema.n_averaged.fill_(n_averaged)
