"""The training recipe: typed sections, loaded from YAML (with ``inherit:``), overridden by ``key=value``.

Every mistake in a recipe (unknown key, wrong type, impossible value, missing data folder) is found here and
reported as ONE sentence naming the key, before a model is built or a file is written.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data.config import DataConfig
from ..errors import UserError


@dataclass
class ModelConfig:
    name: str = "convnext_tiny"  # an architecture of convnext.list_models()
    pretrained: str | None = None  # weight tag, file or URL to start from (fine-tuning); None: from scratch
    num_classes: int | None = None  # None: the dataset's class count
    drop_path_rate: float = 0.1  # stochastic depth at the last block (linear from 0)
    layer_scale_init_value: float = 1e-6
    head_init_scale: float = 1.0
    grad_checkpointing: bool = False
    chunked_mlp: bool = True  # CPU fp32: the block MLP in row chunks (same math, half the activations)
    options: dict = field(default_factory=dict)  # extra constructor arguments, e.g. {depths: [1,1,3,1]}


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 4e-3  # learning rate at an effective batch of lr_base_batch (scaled linearly to the real one)
    lr_base_batch: int | None = 4096  # None: use lr as given, whatever the batch
    weight_decay: float = 0.05  # not applied to norms, biases, layer scale and GRN gamma/beta
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9  # sgd only
    layer_decay: float | None = None  # layer-wise lr decay (official ConvNeXt layer ids); None or 1: off
    clip_grad: float | None = None  # max global gradient norm; None: no clipping
    fused: bool | None = None  # None: fused AdamW where this torch supports it


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | constant
    warmup_epochs: float = 20.0  # linear warmup from 0, stepped per optimizer step
    min_lr: float = 1e-6  # cosine floor


@dataclass
class TrainLoopConfig:
    batch_size: int = 128  # per device
    accum_steps: int = 1  # gradient accumulation: effective batch = batch_size x devices x accum_steps
    label_smoothing: float = 0.1
    amp: str = "none"  # none | bf16 | fp16 (fp16: CUDA only, with a GradScaler)
    channels_last: bool = False
    compile: bool = False  # torch.compile the model
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # CPU intra-op threads (torch.set_num_threads); None: torch's default
    log_every: int = 50  # optimizer steps between progress-bar / TensorBoard updates (one host sync each)
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated); 0: never
    eval_batch_size: int | None = None  # None: 2 x batch_size
    progress: bool = True


@dataclass
class EmaConfig:
    enabled: bool = True
    decay: float = 0.9999
    eval: bool = True  # evaluate the EMA weights alongside the model every evaluation


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # also save every N optimizer steps (0: only at the end of each epoch)
    keep_last: int = 3  # epoch_XXXX.pth files kept (last.pth and best.pth are always kept)
    best_by: str = "auto"  # auto (EMA top-1 if EMA is evaluated, else model) | ema | model


@dataclass
class RunConfig:
    dir: str = "runs/run"  # run folder: config.yaml, metrics.jsonl, tb/, checkpoints/, curves.png
    auto_resume: bool = True  # resume <dir>/checkpoints/last.pth when it exists
    export_samples: int = 0  # write this many validation images as PNG into <dir>/samples/
    # experiment trackers fed besides metrics.jsonl (rank 0): tensorboard (<dir>/tb), mlflow
    # (MLFLOW_TRACKING_URI or ./mlruns), wandb (<dir>/wandb; WANDB_MODE=offline works offline); []: none
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])


@dataclass
class TrainConfig:
    epochs: int = 300
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    run: RunConfig = field(default_factory=RunConfig)


# ----------------------------------------------------------------------------------------------------------
# YAML -> dict (with inheritance) -> typed dataclasses


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "options":
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A recipe file as a dict, with ``inherit: other.yaml`` (relative to the file) merged underneath."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    if path.resolve() in _seen:
        raise UserError(f"config file {path} inherits from itself")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must be a mapping of sections, not {type(raw).__name__}")
    parent = raw.pop("inherit", None)
    if parent is not None:
        base = read_yaml(path.parent / str(parent), _seen + (path.resolve(),))
        raw = _deep_merge(base, raw)
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``optim.lr=1e-3`` style overrides; values are YAML (so 1e-3, true, null, [1, 2] work)."""
    raw = _deep_merge(raw, {})
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not key=value (e.g. optim.lr=1e-3)")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        parts = key.split(".")
        node = raw
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {} if node.get(p) is None else node[p]
                if not isinstance(node[p], dict):
                    raise UserError(f"override {item!r}: {p!r} is a value, not a section")
            node[p] = dict(node[p])
            node = node[p]
        node[parts[-1]] = parsed
    return raw


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in the field's type (lists -> tuples)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except UserError as e:
                errors.append(e)
        raise UserError(f"config key {key} must be {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or (args[-1] is not Ellipsis and len(value) != len(args)):
            raise UserError(f"config key {key} must be a list of {len(args)} numbers, got {value!r}")
        inner = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        return tuple(_coerce(v, a, key) for v, a in zip(value, inner))
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key {key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise UserError(f"config key {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):  # YAML reads "1e-3" without a dot as a string
                try:
                    return float(value)
                except ValueError:
                    pass
            raise UserError(f"config key {key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"config key {key} must be a string, got {value!r}")
        return value
    return value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise UserError(f"config section {prefix.rstrip('.') or 'root'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(fields)}"
            raise UserError(f"unknown config key {prefix}{key}{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def _check(cond: bool, key: str, what: str, value: Any) -> None:
    if not cond:
        raise UserError(f"config key {key} {what}, got {value!r}")


def validate(cfg: TrainConfig, *, check_paths: bool = True) -> None:
    """Impossible values, each one sentence naming its key."""
    from ..models import list_models

    _check(cfg.epochs >= 1, "epochs", "must be at least 1", cfg.epochs)
    arch = cfg.model.name.partition(".")[0]
    if arch not in list_models():
        close = difflib.get_close_matches(arch, list_models(), n=1)
        hint = f"; did you mean {close[0]}?" if close else "; see `convnext models`"
        raise UserError(f"config key model.name: unknown model {cfg.model.name!r}{hint}")
    _check(
        0 <= cfg.model.drop_path_rate < 1,
        "model.drop_path_rate",
        "must be in [0, 1)",
        cfg.model.drop_path_rate,
    )
    _check(
        cfg.model.num_classes is None or cfg.model.num_classes >= 1,
        "model.num_classes",
        "must be >= 1",
        cfg.model.num_classes,
    )
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
    _check(all(0 <= b < 1 for b in o.betas), "optim.betas", "must be two numbers in [0, 1)", o.betas)
    _check(o.eps > 0, "optim.eps", "must be > 0", o.eps)
    _check(
        o.layer_decay is None or 0 < o.layer_decay <= 1,
        "optim.layer_decay",
        "must be in (0, 1]",
        o.layer_decay,
    )
    _check(o.clip_grad is None or o.clip_grad > 0, "optim.clip_grad", "must be > 0 (or null)", o.clip_grad)
    s = cfg.schedule
    _check(s.name in ("cosine", "constant"), "schedule.name", "must be cosine or constant", s.name)
    _check(
        0 <= s.warmup_epochs <= cfg.epochs,
        "schedule.warmup_epochs",
        f"must be in [0, epochs={cfg.epochs}]",
        s.warmup_epochs,
    )
    _check(s.min_lr >= 0, "schedule.min_lr", "must be >= 0", s.min_lr)
    t = cfg.train
    _check(t.batch_size >= 1, "train.batch_size", "must be at least 1", t.batch_size)
    _check(t.accum_steps >= 1, "train.accum_steps", "must be at least 1", t.accum_steps)
    _check(
        t.eval_batch_size is None or t.eval_batch_size >= 1,
        "train.eval_batch_size",
        "must be at least 1",
        t.eval_batch_size,
    )
    _check(0 <= t.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)", t.label_smoothing)
    _check(t.amp in ("none", "bf16", "fp16"), "train.amp", "must be none, bf16 or fp16", t.amp)
    _check(t.device in ("auto", "cpu", "cuda"), "train.device", "must be auto, cpu or cuda", t.device)
    _check(t.threads is None or t.threads >= 1, "train.threads", "must be at least 1 (or null)", t.threads)
    _check(t.log_every >= 1, "train.log_every", "must be at least 1", t.log_every)
    _check(t.eval_every >= 0, "train.eval_every", "must be >= 0", t.eval_every)
    _check(0 <= cfg.ema.decay < 1, "ema.decay", "must be in [0, 1)", cfg.ema.decay)
    c = cfg.checkpoint
    _check(c.every_steps >= 0, "checkpoint.every_steps", "must be >= 0", c.every_steps)
    _check(c.keep_last >= 0, "checkpoint.keep_last", "must be >= 0", c.keep_last)
    _check(
        c.best_by in ("auto", "ema", "model"), "checkpoint.best_by", "must be auto, ema or model", c.best_by
    )
    _check(cfg.run.export_samples >= 0, "run.export_samples", "must be >= 0", cfg.run.export_samples)
    _check(
        isinstance(cfg.run.loggers, (list, tuple))
        and all(x in ("tensorboard", "mlflow", "wandb") for x in cfg.run.loggers),
        "run.loggers",
        "must be a list of tensorboard, mlflow and/or wandb ([] for none)",
        cfg.run.loggers,
    )
    d = cfg.data
    _check(d.img_size >= 8, "data.img_size", "must be at least 8", d.img_size)
    _check(d.workers >= 0, "data.workers", "must be >= 0", d.workers)
    if check_paths and d.dataset == "imagefolder":
        if not d.root:
            raise UserError(
                "config key data.root is required for an image folder (data.root=/path/to/images)"
            )
        if not Path(d.root).expanduser().is_dir():
            raise UserError(f"config key data.root: folder {d.root} does not exist")


def load_config(
    path: str | Path | None, overrides: list[str] = (), *, check_paths: bool = True
) -> TrainConfig:
    """Read, override, type-check and validate a recipe. Raises UserError before any work is done."""
    raw = read_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, list(overrides))
    cfg = _build(TrainConfig, raw, "")
    validate(cfg, check_paths=check_paths)
    return cfg


def config_from_dict(raw: dict, *, check_paths: bool = False) -> TrainConfig:
    """The typed config back from a checkpoint's plain dict."""
    cfg = _build(TrainConfig, raw, "")
    validate(cfg, check_paths=check_paths)
    return cfg


def to_dict(cfg: Any) -> dict:
    """Plain types only (tuples -> lists), so the config fits in a weights_only checkpoint and in YAML."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def dump_yaml(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
