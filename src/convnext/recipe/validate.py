"""Every value's range and every constraint between keys, each one sentence naming its key, before a model
is built or a file is written; also what the recipe asks of this machine (data folders, weight files, the
run folder)."""

from __future__ import annotations

import difflib
import functools
import inspect
import os
from pathlib import Path
from typing import Any

from ..errors import UserError
from .pretrain import is_fcmae, split_fcmae, validate_pretraining
from .schema import ModelConfig, TrainConfig


def _check(cond: bool, key: str, what: str, value: Any) -> None:
    if not cond:
        raise UserError(f"config key {key} {what}, got {value!r}")


def _in(value: float, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> bool:
    return (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)


def validate(cfg: TrainConfig, *, check_paths: bool = True, resuming: bool = False) -> None:
    """Every value's range and every constraint between keys, each one sentence naming its key.

    ``check_paths``: also check what lies on this machine (data folders, class-list and weight files, the
    run folder), as a training run needs; off for a recipe read back from a checkpoint or run folder.
    ``resuming``: a checkpoint will be restored, which holds every weight: ``model.pretrained`` is not read
    then, so its file may be gone (a purged scratch folder, an offline node).
    """
    _check(cfg.epochs >= 1, "epochs", "must be at least 1", cfg.epochs)
    _check(0 <= cfg.seed < 2**63, "seed", "must be in [0, 2**63)", cfg.seed)
    model = _validate_model(cfg, check_paths and not resuming)  # it checks model.pretrained's file only
    _validate_data(cfg, check_paths, model)
    validate_pretraining(cfg)  # fcmae_* models: patch size, no labels (recipe/pretrain.py)
    _validate_optim(cfg, model)
    _validate_loop(cfg, check_paths)


def _validate_model(cfg: TrainConfig, check_paths: bool) -> Any:
    """model.*; returns the architecture built on the meta device (no memory, no weights) with the
    recipe's options, so the other checks can ask it what it supports."""
    from ..models import list_models
    from ..models.factory import dense_backbone

    m, _ = split_fcmae(cfg.model)  # an FCMAE model is checked as its encoder
    arch = m.name.partition(".")[0]
    if arch not in list_models() and dense_backbone(arch) is None:
        close = difflib.get_close_matches(arch, list_models(), n=1)
        hint = f"; did you mean {close[0]}?" if close else "; see `convnext models`"
        raise UserError(f"config key model.name: unknown model {m.name!r}{hint}")
    _check(
        _in(m.drop_path_rate, 0, 1, hi_open=True),
        "model.drop_path_rate",
        "must be in [0, 1)",
        m.drop_path_rate,
    )
    _check(m.num_classes is None or m.num_classes >= 1, "model.num_classes", "must be >= 1", m.num_classes)
    _check(
        m.layer_scale_init_value >= 0,
        "model.layer_scale_init_value",
        "must be >= 0",
        m.layer_scale_init_value,
    )
    _check(m.head_init_scale > 0, "model.head_init_scale", "must be > 0", m.head_init_scale)
    built = meta_model(arch, m)
    if m.grad_checkpointing and not callable(getattr(built, "set_grad_checkpointing", None)):
        raise UserError(
            f"config key model.grad_checkpointing: {arch} ({type(built).__name__}) does not support "
            "gradient checkpointing; set model.grad_checkpointing=false"
        )
    if m.pretrained is not None:
        _check_pretrained(m.pretrained, arch, check_paths)
    return built


# Constructor arguments that have their own key, and those a training recipe cannot use.
_OWN_KEY = {
    "num_classes": "model.num_classes",
    "drop_path_rate": "model.drop_path_rate",
    "layer_scale_init_value": "model.layer_scale_init_value",
    "head_init_scale": "model.head_init_scale",
}


_NOT_FOR_TRAINING = {
    "features_only": "a training run needs the classifier head (features_only is for backbones: "
    "convnext.create_model(name, features_only=True))",
    "out_indices": "a training run needs the classifier head (out_indices selects backbone outputs)",
    "in_chans": "the data pipeline gives 3-channel RGB images",
    "block": "it is not a recipe value (the family decides the block)",
}


@functools.lru_cache(maxsize=64)
def _option_names(arch: str) -> tuple[type, tuple[str, ...]]:
    """The family's class and the constructor arguments a recipe may set in model.options."""
    import torch

    from ..models import build_model

    with torch.device("meta"):
        cls = type(build_model(arch, num_classes=2))
    params = inspect.signature(cls.__init__).parameters.values()
    plain = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = tuple(p.name for p in params if p.kind in plain and p.name != "self" and p.name not in _OWN_KEY)
    return cls, names


def meta_model(arch: str, m: ModelConfig) -> Any:
    import torch

    from ..models import build_model, get_variant
    from ..models.factory import dense_backbone, dense_head_options

    if is_fcmae(arch):  # pre-training: the encoder, without the FCMAE settings
        m, _ = split_fcmae(m)
        arch = m.name.partition(".")[0]
    backbone = dense_backbone(arch)  # segmentation / detection: the backbone's options and the heads'
    cls, names = _option_names(backbone or arch)
    if backbone is not None:
        names = (*names, *dense_head_options(arch))
    defaults = get_variant(backbone or arch).kwargs
    for key, value in m.options.items():
        where = f"config key model.options.{key}"
        if key in _OWN_KEY:
            raise UserError(f"{where}: set {_OWN_KEY[key]} instead")
        harmless = (key == "in_chans" and value == 3) or (key == "features_only" and value is False)
        if key in _NOT_FOR_TRAINING and not harmless:
            raise UserError(f"{where} cannot be set in a recipe: {_NOT_FOR_TRAINING[key]}")
        if key not in names:
            known = ", ".join(n for n in names if n not in _NOT_FOR_TRAINING)
            raise UserError(f"{where}: {arch} ({cls.__name__}) has no such option; its options: {known}")
        default = defaults.get(key)
        if isinstance(default, (list, tuple)):
            ok = isinstance(value, (list, tuple)) and len(value) == len(default)
            ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
            _check(ok, f"model.options.{key}", f"must be a list of {len(default)} positive integers", value)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            _check(ok, f"model.options.{key}", "must be a positive integer", value)
    kwargs = dict(m.options)
    kwargs.update(drop_path_rate=m.drop_path_rate, head_init_scale=m.head_init_scale)
    if "layer_scale_init_value" in inspect.signature(cls.__init__).parameters:
        kwargs["layer_scale_init_value"] = m.layer_scale_init_value
    try:
        with torch.device("meta"):
            return build_model(arch, num_classes=m.num_classes or 2, **kwargs)
    except Exception as e:  # any constructor failure is a bad option value
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"config key model.options: {arch} cannot be built with {m.options}: {first}"
        ) from None


def _check_pretrained(src: str, arch: str, check_paths: bool) -> None:
    from ..models.factory import dense_backbone
    from ..weights.registry import find_tag, list_tags

    entry = find_tag(src)
    if entry is not None:
        if entry.arch not in (arch, dense_backbone(arch)):  # a dense model starts from its backbone's
            raise UserError(
                f"config key model.pretrained: weights {src} are for {entry.arch}, not model.name={arch}"
            )
        return
    if src.startswith(("http://", "https://", "hf-hub:")) or not check_paths:  # read when the run starts
        return
    if Path(src).expanduser().exists():
        return
    if (
        "/" not in src
        and "\\" not in src
        and Path(src).suffix not in (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
    ):
        tags = list_tags(arch) or list_tags()[:6]
        raise UserError(
            f"config key model.pretrained: {src!r} is neither a file nor a known weights tag; "
            f"tags for {arch}: {', '.join(tags) or 'none'}"
        )
    raise UserError(f"config key model.pretrained: {src} does not exist")


def model_task(name: str) -> str:
    """What ``model.name`` trains for: ``segmentation`` (upernet_*), ``detection`` (maskrcnn_*,
    fasterrcnn_*), ``pretrain`` (fcmae_*) or ``classify``; a dataset's catalog ``task`` must agree."""
    arch = name.partition(".")[0]
    if arch.startswith("upernet_"):
        return "segmentation"
    if arch.startswith(("maskrcnn_", "fasterrcnn_")):
        return "detection"
    return "pretrain" if is_fcmae(arch) else "classify"


def _validate_data(cfg: TrainConfig, check_paths: bool, model: Any) -> None:
    from ..data import datasets
    from ..data.randaugment import parse_randaugment

    d = cfg.data
    # data/catalog.py: UserError naming the known datasets; any spelling (ImageFolder, image_folder) is
    # stored as the catalog's name, so every later `d.dataset == "imagefolder"` holds for it too
    spec = datasets.find_dataset(d.dataset)
    d.dataset = name = spec.name
    wants = model_task(cfg.model.name)
    if spec.task != wants and not (wants == "pretrain" and spec.task == "classify"):
        what = {"classify": "a classifier", "pretrain": "a pre-training model"}.get(wants, f"a {wants} model")
        raise UserError(
            f"config key data.dataset: {name} is a {spec.task} dataset but model.name={cfg.model.name} is "
            f"{what}; choose a {wants if wants != 'pretrain' else 'classify'} dataset or another model"
        )
    if spec.task == "segmentation":
        lo, hi = d.seg_ratio_range
        _check(
            0 < lo <= hi, "data.seg_ratio_range", "must be [min, max] with 0 < min <= max", d.seg_ratio_range
        )
        _check(min(d.seg_scale) >= 1, "data.seg_scale", "must be two positive sizes", d.seg_scale)
        _check(
            _in(d.cat_max_ratio, 0, 1, lo_open=True),
            "data.cat_max_ratio",
            "must be in (0, 1]",
            d.cat_max_ratio,
        )
        _check(min(d.scenes) >= 1, "data.scenes", "must be two positive scene counts", d.scenes)
    for key in ("train_split", "val_split"):
        _check(bool(getattr(d, key).strip()), f"data.{key}", "must name a split folder", getattr(d, key))
    _check(
        _in(d.val_fraction, 0, 1, lo_open=True, hi_open=True),
        "data.val_fraction",
        "must be in (0, 1)",
        d.val_fraction,
    )
    if name == "digits" and _in(d.val_fraction, 0, 1, lo_open=True, hi_open=True):
        from ..data.array_datasets import digits_val_fraction_problem

        why = digits_val_fraction_problem(d.val_fraction)
        if why is not None:
            raise UserError(f"config key data.val_fraction={d.val_fraction:g} {why}")
    _check(0 <= d.split_seed < 2**63, "data.split_seed", "must be in [0, 2**63)", d.split_seed)
    n = d.labels_per_class
    ok = n is None or (isinstance(n, int) and not isinstance(n, bool) and n >= 1)
    _check(ok, "data.labels_per_class", "must be a positive number of images per class (or null: all)", n)
    smallest = model.reduction  # the model's total stride: 4 x 2 x 2 x 2, or the 16 px patch stem
    _check(
        d.img_size >= smallest,
        "data.img_size",
        f"must be at least {smallest} for {cfg.model.name} (it downsamples {smallest}x)",
        d.img_size,
    )
    _check(_in(d.crop_pct, 0, 1, lo_open=True), "data.crop_pct", "must be in (0, 1]", d.crop_pct)
    _check(
        d.interpolation in ("bicubic", "bilinear", "nearest"),
        "data.interpolation",
        "must be bicubic, bilinear or nearest",
        d.interpolation,
    )
    _check(d.crop_mode in ("center", "squash"), "data.crop_mode", "must be center or squash", d.crop_mode)
    _check(d.max_pixels >= 0, "data.max_pixels", "must be >= 0 (0: no limit)", d.max_pixels)
    _check(all(_in(v, 0, 1) for v in d.mean), "data.mean", "must be three numbers in [0, 1]", d.mean)
    _check(all(v > 0 for v in d.std), "data.std", "must be three numbers > 0 (it divides)", d.std)
    lo, hi = d.scale
    _check(0 < lo <= hi <= 1, "data.scale", "must be [min, max] with 0 < min <= max <= 1", d.scale)
    lo, hi = d.ratio
    _check(0 < lo <= hi, "data.ratio", "must be [min, max] with 0 < min <= max", d.ratio)
    _check(_in(d.hflip, 0, 1), "data.hflip", "must be a probability in [0, 1]", d.hflip)
    if d.randaugment is not None:
        parse_randaugment(d.randaugment)
    _check(_in(d.reprob, 0, 1), "data.reprob", "must be a probability in [0, 1]", d.reprob)
    _check(d.mixup >= 0, "data.mixup", "must be >= 0 (an alpha; 0 disables)", d.mixup)
    _check(d.cutmix >= 0, "data.cutmix", "must be >= 0 (an alpha; 0 disables)", d.cutmix)
    _check(_in(d.mixup_prob, 0, 1), "data.mixup_prob", "must be a probability in [0, 1]", d.mixup_prob)
    _check(
        _in(d.mixup_switch_prob, 0, 1),
        "data.mixup_switch_prob",
        "must be a probability in [0, 1]",
        d.mixup_switch_prob,
    )
    if (d.mixup > 0 or d.cutmix > 0) and d.mixup_prob > 0 and cfg.model.num_classes == 1:
        raise UserError("config key data.mixup: MixUp/CutMix need at least 2 classes, model.num_classes is 1")
    _check(d.workers >= 0, "data.workers", "must be >= 0 (or auto)", d.workers)
    _check(d.prefetch_factor >= 1, "data.prefetch_factor", "must be at least 1", d.prefetch_factor)
    if check_paths:
        if d.dataset == "imagefolder":
            if not d.root:
                raise UserError(
                    "config key data.root is required for an image folder (data.root=/path/to/images)"
                )
            if not Path(d.root).expanduser().is_dir():
                raise UserError(f"config key data.root: folder {d.root} does not exist")
        if (
            d.class_list not in (None, "imagenet1k", "folders")
            and not Path(d.class_list).expanduser().is_file()
        ):
            raise UserError(
                f"config key data.class_list: {d.class_list!r} is not imagenet1k, folders or an existing file"
            )


def _validate_optim(cfg: TrainConfig, model: Any) -> None:
    from .layer_ids import layer_ids

    o = cfg.optim
    _check(o.name in ("adamw", "sgd"), "optim.name", "must be adamw or sgd", o.name)
    _check(o.lr >= 0, "optim.lr", "must be >= 0", o.lr)
    _check(
        o.lr_base_batch is None or o.lr_base_batch >= 1,
        "optim.lr_base_batch",
        "must be >= 1",
        o.lr_base_batch,
    )
    _check(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0", o.weight_decay)
    _check(
        all(_in(b, 0, 1, hi_open=True) for b in o.betas),
        "optim.betas",
        "must be two numbers in [0, 1)",
        o.betas,
    )
    _check(o.eps > 0, "optim.eps", "must be > 0", o.eps)
    _check(_in(o.momentum, 0, 1, hi_open=True), "optim.momentum", "must be in [0, 1)", o.momentum)
    _check(
        o.layer_decay is None or _in(o.layer_decay, 0, 1, lo_open=True),
        "optim.layer_decay",
        "must be in (0, 1] (or null)",
        o.layer_decay,
    )
    if o.layer_decay is not None and o.layer_decay != 1:
        layer_ids(model)  # one sentence for a model without a layer order
    _check(o.clip_grad is None or o.clip_grad > 0, "optim.clip_grad", "must be > 0 (or null)", o.clip_grad)
    if o.fused and o.name == "adamw" and cfg.train.device == "cpu" and not cpu_fused_adamw():
        raise UserError("config key optim.fused: this torch has no fused AdamW for CPU; set optim.fused=null")
    s = cfg.schedule
    _check(
        s.name in ("cosine", "constant", "poly", "step"),
        "schedule.name",
        "must be cosine, constant, poly or step",
        s.name,
    )
    _check(
        0 <= s.warmup_epochs <= cfg.epochs,
        "schedule.warmup_epochs",
        f"must be in [0, epochs={cfg.epochs}]",
        s.warmup_epochs,
    )
    _check(s.min_lr >= 0, "schedule.min_lr", "must be >= 0", s.min_lr)
    _check(0 <= s.warmup_ratio <= 1, "schedule.warmup_ratio", "must be in [0, 1]", s.warmup_ratio)
    if s.name == "step":
        ms = list(s.milestones)
        ok = bool(ms) and ms == sorted(ms) and all(0 < m <= cfg.epochs for m in ms)
        _check(ok, "schedule.milestones", f"must be increasing epochs in (0, epochs={cfg.epochs}]", ms)
        _check(_in(s.gamma, 0, 1, lo_open=True), "schedule.gamma", "must be in (0, 1]", s.gamma)


def _validate_loop(cfg: TrainConfig, check_paths: bool) -> None:
    t = cfg.train
    _check(t.batch_size >= 1, "train.batch_size", "must be at least 1", t.batch_size)
    _check(t.accum_steps >= 1, "train.accum_steps", "must be at least 1", t.accum_steps)
    _check(
        t.eval_batch_size is None or t.eval_batch_size >= 1,
        "train.eval_batch_size",
        "must be at least 1",
        t.eval_batch_size,
    )
    _check(
        _in(t.label_smoothing, 0, 1, hi_open=True),
        "train.label_smoothing",
        "must be in [0, 1)",
        t.label_smoothing,
    )
    _check(t.amp in ("none", "bf16", "fp16"), "train.amp", "must be none, bf16 or fp16", t.amp)
    _check(t.device in ("auto", "cpu", "cuda"), "train.device", "must be auto, cpu or cuda", t.device)
    if t.amp == "fp16" and t.device == "cpu":
        raise UserError("config key train.amp: fp16 needs a CUDA device (train.device=cpu); use bf16 on CPU")
    _check(t.threads is None or t.threads >= 1, "train.threads", "must be at least 1 (or null)", t.threads)
    _check(t.log_every >= 1, "train.log_every", "must be at least 1", t.log_every)
    _check(t.eval_every >= 0, "train.eval_every", "must be >= 0", t.eval_every)
    e = cfg.ema
    _check(_in(e.decay, 0, 1, hi_open=True), "ema.decay", "must be in [0, 1)", e.decay)
    c = cfg.checkpoint
    _check(c.every_steps >= 0, "checkpoint.every_steps", "must be >= 0", c.every_steps)
    _check(c.keep_last >= 0, "checkpoint.keep_last", "must be >= 0", c.keep_last)
    _check(
        c.best_by in ("auto", "ema", "model"), "checkpoint.best_by", "must be auto, ema or model", c.best_by
    )
    if c.best_by == "ema" and not (e.enabled and e.eval):
        raise UserError(
            "config key checkpoint.best_by: ema needs ema.enabled=true and ema.eval=true "
            "(or set checkpoint.best_by=model)"
        )
    r = cfg.run
    _check(bool(r.dir.strip()), "run.dir", "must name a folder", r.dir)
    _check(r.export_samples >= 0, "run.export_samples", "must be >= 0", r.export_samples)
    _check(
        isinstance(r.loggers, (list, tuple))
        and all(x in ("tensorboard", "mlflow", "wandb") for x in r.loggers),
        "run.loggers",
        "must be a list of tensorboard, mlflow and/or wandb ([] for none)",
        r.loggers,
    )
    if check_paths:
        check_run_dir(Path(r.dir).expanduser())


def check_run_dir(run_dir: Path) -> None:
    """The run folder can be created (or is a folder already): no file in its place or on its path, and the
    nearest existing folder above it is writable."""
    probe = run_dir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        which = "is a file" if probe == run_dir else f"cannot be created: {probe} is a file"
        raise UserError(f"config key run.dir: {run_dir} {which}, not a folder; choose another run.dir")
    if probe != run_dir and not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"config key run.dir: {run_dir} cannot be created: {probe} is not writable")


def cpu_fused_adamw() -> bool:
    """Whether this torch has a fused AdamW kernel for CPU tensors (added in torch 2.4)."""
    import torch
    from torch import nn

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
