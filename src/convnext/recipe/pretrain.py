"""What makes a recipe a pre-training one: ``model.name: fcmae_<encoder>`` (``fcmae_convnextv2_atto``), with
the FCMAE settings among ``model.options`` beside the encoder's own (depths, dims): one recipe schema for
classification and pre-training, so a pre-training run folder reads back like any other. Torch-free."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import UserError
from .schema import ModelConfig, TrainConfig

FCMAE_PREFIX = "fcmae_"

#: the FCMAE settings a recipe may put in model.options, with the official defaults (main_pretrain.py)
FCMAE_OPTIONS: dict[str, Any] = {
    "mask_ratio": 0.6,
    "patch_size": 32,
    "decoder_depth": 1,
    "decoder_embed_dim": 512,
    "norm_pix_loss": True,
}


def is_fcmae(name: str) -> bool:
    return name.partition(".")[0].startswith(FCMAE_PREFIX)


def split_fcmae(m: ModelConfig) -> tuple[ModelConfig, dict[str, Any]]:
    """(the encoder's model section, the FCMAE settings) of an ``fcmae_*`` model section; each FCMAE
    value checked in one sentence. A classifier's section comes back as it is, with no settings."""
    if not is_fcmae(m.name):
        return m, {}
    settings = {k: m.options.get(k, v) for k, v in FCMAE_OPTIONS.items()}
    r = settings["mask_ratio"]
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1:
        raise UserError(f"config key model.options.mask_ratio must be in (0, 1), got {r!r}")
    for key in ("patch_size", "decoder_depth", "decoder_embed_dim"):
        v = settings[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"config key model.options.{key} must be a positive integer, got {v!r}")
    if not isinstance(settings["norm_pix_loss"], bool):
        raise UserError(
            f"config key model.options.norm_pix_loss must be true or false, got {settings['norm_pix_loss']!r}"
        )
    encoder = dataclasses.replace(
        m,
        name=m.name.partition(".")[0][len(FCMAE_PREFIX) :],
        options={k: v for k, v in m.options.items() if k not in FCMAE_OPTIONS},
    )
    return encoder, settings


def validate_pretraining(cfg: TrainConfig) -> None:
    """What only a pre-training recipe must satisfy (the encoder's values are checked as a classifier's)."""
    _, s = split_fcmae(cfg.model)
    if not s:
        return
    size, patch = cfg.data.img_size, s["patch_size"]
    if size % patch:
        raise UserError(
            f"config key data.img_size={size} must be a multiple of model.options.patch_size={patch} "
            "(the mask is drawn per patch)"
        )
    if cfg.model.pretrained is not None:
        raise UserError(
            "config key model.pretrained: a pre-training run starts from random weights (resume a "
            "pre-training run with --resume instead)"
        )
    if cfg.data.labels_per_class is not None:
        raise UserError("config key data.labels_per_class: pre-training uses no labels; leave it unset")
    if cfg.data.mixup > 0 or cfg.data.cutmix > 0:
        raise UserError("config key data.mixup/data.cutmix: pre-training mixes no labels; set both to 0")
