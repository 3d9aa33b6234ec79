"""Checkpoint containers: where the weights sit inside (official, timm, Lightning, our training runs, the
original ConvNext-PyTorch project's ``*.pth.tar``, EMA copies), wrapper prefixes, the values check, and the
model options a checkpoint implies.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import UserError
from .formats import StateDict, family_of

# Our training checkpoints (engine/checkpoint.py writes them with train_state; named here, in the layer that
# reads every container, so that weights/ and inference/ recognise them without importing the engine).
TRAIN_FORMAT = "convnext-train"
# 1: the lr schedule's position was a LambdaLR state under "scheduler" (still read: the lr is now a function
#    of "step" alone, so that entry is simply ignored).
# 2: no "scheduler"; adds "epoch_end", "best_epoch" and "epoch_partial" (a mid-epoch checkpoint's running
#    sums, so that a resumed epoch logs the same train loss as an uninterrupted one).
TRAIN_VERSION = 2


def strip_prefixes(sd: StateDict) -> StateDict:
    """Drop wrapper prefixes every key shares: DDP/DataParallel ``module.``, torch.compile ``_orig_mod.``,
    and torch.optim.swa_utils.AveragedModel's ``module.`` with its ``n_averaged`` counter (EMA copies)."""
    if "n_averaged" in sd and all(k.startswith("module.") for k in sd if k != "n_averaged"):
        sd = {k: v for k, v in sd.items() if k != "n_averaged"}
    for prefix in ("module.", "_orig_mod.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


# Where containers keep the weights: the official/ours ("model"), timm's train.py and the original
# ConvNext-PyTorch project's *.pth.tar ("state_dict"), Lightning, and other trainers ("model_state_dict");
# and their EMA copies (official/ours "model_ema", the ConvNext-PyTorch project's "ema_state_dict", timm's
# "state_dict_ema").
MODEL_KEYS = ("model", "state_dict", "model_state_dict")
EMA_KEYS = ("model_ema", "ema_state_dict", "state_dict_ema")
_META_KEYS = ("epoch", "step", "metrics", "best_acc1", "best_top1")


def is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def ranked_by_ema(obj: Any) -> bool:
    """Whether a training checkpoint of ours holds EMA weights and ranked its best by them
    (``checkpoint.best_by: ema``, or ``auto`` with the EMA evaluated, as every ImageNet recipe does): then
    the accuracy its summary, metrics.jsonl and best.pth stand for is the EMA's."""
    if not isinstance(obj, dict) or obj.get("format") != TRAIN_FORMAT:
        return False
    if not is_state_dict(obj.get("model_ema")):
        return False
    config = obj.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("checkpoint"), dict):
        return False  # not written by `convnext train` (which records the whole config): no guess
    best_by = config["checkpoint"].get("best_by", "auto")
    ema_cfg = config.get("ema") if isinstance(config.get("ema"), dict) else {}
    return best_by == "ema" or (
        best_by == "auto" and bool(ema_cfg.get("enabled", True)) and bool(ema_cfg.get("eval", True))
    )


def unwrap(obj: Any, where: str, ema: bool | None = False) -> tuple[StateDict, dict[str, Any]]:
    """The state dict inside a checkpoint container, and what the container says about it (arch, class
    names, epoch, best accuracy, a training run's eval settings). ``ema=None``: the EMA weights when the
    checkpoint is a training run's that ranked its best by them (:func:`ranked_by_ema`), else the model's;
    ``meta["ema"]`` says which were taken."""
    if not isinstance(obj, dict):
        raise UserError(f"{where} holds a {type(obj).__name__}, not a state dict")
    if ema is None:
        ema = ranked_by_ema(obj)
    meta: dict[str, Any] = {"ema": bool(ema)}
    for key in ("arch", "class_names", "data_config"):  # what `convnext convert` records
        if key in obj and not isinstance(obj[key], Tensor):
            meta[key] = obj[key]
    for key in _META_KEYS:
        if key in obj:
            v = obj[key]
            meta[key] = v.item() if isinstance(v, Tensor) and v.numel() == 1 else v
    if obj.get("format") == TRAIN_FORMAT:
        meta["container"] = TRAIN_FORMAT
        config = obj.get("config")
        for section in ("data", "model"):  # the run's eval geometry and the model options it was built with
            if isinstance(config, dict) and isinstance(config.get(section), dict):
                meta[section] = config[section]
    if ema:
        key = next((k for k in EMA_KEYS if is_state_dict(obj.get(k))), None)
        if key is None:
            raise UserError(
                f"{where} has no EMA weights ({', '.join(map(repr, EMA_KEYS))}); load it without ema "
                "(the official *_ema releases already hold the EMA weights as 'model')"
            )
        return obj[key], meta
    for key in MODEL_KEYS:
        if is_state_dict(obj.get(key)):
            return obj[key], meta
    if is_state_dict(obj):
        return obj, meta
    top = ", ".join(map(str, list(obj)[:6]))
    raise UserError(
        f"{where} holds no state dict (looked under {', '.join(map(repr, MODEL_KEYS))}); "
        f"top-level keys: {top}"
    )


def check_tensors(sd: StateDict, where: str) -> None:
    """Refuse weights that would predict nonsense: a non-float tensor (integer weights give uniform
    probabilities) or a NaN/inf (a diverged run). One pass, no copies: a tensor's sum is finite exactly
    when all its values are, barring an overflow, which the exact check then settles."""
    for k, v in sd.items():
        if v.device.type == "meta" or k.endswith(".num_batches_tracked"):  # BatchNorm's counter (UperNet's)
            continue
        if not v.is_floating_point():
            raise UserError(
                f"{where}: tensor {k} is {str(v.dtype).removeprefix('torch.')}, not floating point; "
                "ConvNeXt weights are float (integer weights would give meaningless uniform "
                "probabilities): re-export the checkpoint in float"
            )
        if v.numel() and not bool(torch.isfinite(v.sum())):
            bad = int((~torch.isfinite(v)).sum())
            if bad:
                raise UserError(
                    f"{where}: tensor {k} holds {bad} NaN/inf value(s) of {v.numel()}; refusing weights "
                    "that would predict nonsense (did the training diverge?)"
                )


def model_options_of(sd: StateDict, arch: str | None = None) -> dict[str, Any]:
    """Constructor options the weights themselves imply (our names): V1 weights without layer scale
    (``layer_scale_init_value=0`` when trained) need a model without it, isotropic ones with it one
    that has it (its default is none). With ``arch`` (the architecture about to be built), weights of its
    family whose depths and widths match no named variant (a run trained with ``model.options``, written
    out by ``convert`` or to a peer's layout) also give those shapes, so they load back as they were."""
    from ..models.factory import family_of_name, has_layer_scale_by_default
    from .formats import infer_arch, shape_options

    family = family_of(sd)
    has_gamma = any(k.endswith(".gamma") and not k.endswith(".grn.gamma") for k in sd)  # layer scale's
    has_blocks = any(k.endswith(".dwconv.weight") for k in sd)
    opts: dict[str, Any] = {}
    if has_blocks and has_gamma != has_layer_scale_by_default(family):
        opts["layer_scale_init_value"] = 1e-6 if has_gamma else 0.0  # the value is loaded over
    if arch is not None and infer_arch(sd) is None:
        try:
            same_family = family_of_name(arch) == family
        except ValueError:
            same_family = False
        if same_family:
            opts.update(shape_options(sd))
    return opts


def run_model_options(model_section: dict[str, Any] | None, arch: str) -> dict[str, Any]:
    """The constructor options a training run built its model with (``model.options`` and layer scale),
    from its config's ``model:`` section, for rebuilding that model; drop path is a training-only knob."""
    if not model_section:
        return {}
    from ..models.factory import family_of_name, layer_scale_option

    opts = dict(model_section.get("options") or {})
    if str(model_section.get("name") or "").startswith("fcmae_"):  # a pre-training run: its encoder's options
        import inspect

        from ..models.fcmae import FCMAE

        for key in inspect.signature(FCMAE.__init__).parameters:  # mask_ratio, decoder_depth, ...
            opts.pop(key, None)
    try:
        family = family_of_name(arch)
    except ValueError:
        family = None
    if family is not None:  # as training built it
        for key, value in layer_scale_option(family, model_section.get("layer_scale_init_value")).items():
            opts.setdefault(key, value)
    opts.pop("drop_path_rate", None)
    return opts
