"""The training recipe: typed sections, loaded from YAML (with ``inherit:``), overridden by ``key=value``.

Every mistake in a recipe (unknown key, wrong type, value out of range, keys that contradict each other,
missing data folder, a model option the family does not have) is found here and reported as ONE sentence
naming the key, before a model is built or a file is written.

Recipes ship inside the package (``convnext/configs/*.yaml``): ``--config NAME`` finds one by name from
anywhere, a path still works, and a user recipe may ``inherit:`` a bundled one by name.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data.config import DataConfig, auto_workers
from ..errors import UserError

RECIPES_DIR = Path(__file__).resolve().parents[1] / "configs"  # the bundled recipes (package data)


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
    # train.amp=bf16 on a CPU without native bf16 (AVX512-BF16, AMX) trains in fp32; true: bf16 anyway
    emulated_bf16: bool = False
    # refuse a training step estimated to need more than the device's memory (GPU, else RAM); false: skip
    memory_check: bool = True


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


def bundled_recipes() -> dict[str, Path]:
    """Every recipe shipped with the package by name (file stem); names starting with ``_`` are the shared
    bases the others inherit."""
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}


def recipe_summary(path: Path) -> str:
    """A recipe's one-line description: the first line of its header comment."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def find_recipe(ref: str | Path, relative_to: Path | None = None) -> Path:
    """The recipe file ``ref`` names: an existing path (relative to ``relative_to`` when given, else to the
    working folder), else a bundled recipe by name, with or without ``.yaml``.

    ``configs/NAME.yaml`` that does not exist also means the bundled recipe: it is the checkout's own path to
    it (``configs/`` links to the package's recipes), so a command copied from the README or run in another
    folder finds the same file. Any other missing path is an error, never a guess."""
    raw = Path(ref).expanduser()
    path = relative_to / raw if relative_to is not None and not raw.is_absolute() else raw
    if path.is_file():
        return path
    if path.exists():
        raise UserError(f"config file {path} is a folder, not a recipe file")
    name = raw.name[: -len(raw.suffix)] if raw.suffix in (".yaml", ".yml") else raw.name
    bundled = bundled_recipes()
    in_configs = not raw.is_absolute() and raw.parent.parts in ((), ("configs",))
    if in_configs and name in bundled:
        return bundled[name]
    if name in bundled:  # a path elsewhere that happens to carry a bundled recipe's name
        raise UserError(
            f"config file {path} does not exist; for the bundled recipe of that name pass --config {name}"
        )
    public = [n for n in bundled if not n.startswith("_")]
    close = difflib.get_close_matches(name, public, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise UserError(
        f"config file {path} does not exist and no bundled recipe is called {name!r}{hint} "
        "(`convnext recipes` lists them)"
    )


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last one
    silently, so a recipe could set optim.lr twice and train with the one the reader did not see)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A recipe (file path or bundled name) as a dict, with ``inherit: other`` (a file relative to this
    one, else a bundled recipe by name) merged underneath."""
    path = find_recipe(path) if not _seen else Path(path)
    if path.resolve() in _seen:
        raise UserError(f"config file {path} inherits from itself")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"config file {path} cannot be read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(
            f"config file {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            "save it as UTF-8"
        ) from None
    try:
        raw = yaml.load(text, Loader=_RecipeLoader) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"config file {path} is not valid YAML: {what}{where}") from None
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must be a mapping of sections, not {type(raw).__name__}")
    parent = raw.pop("inherit", None)
    if parent is not None:
        if not isinstance(parent, str) or not parent:
            raise UserError(f"config file {path}: inherit must name one recipe file, got {parent!r}")
        base = read_yaml(find_recipe(parent, relative_to=path.parent), _seen + (path.resolve(),))
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
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except UserError:
                pass
        raise UserError(f"config key {key} must be {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or (args[-1] is not Ellipsis and len(value) != len(args)):
            raise UserError(f"config key {key} must be a list of {len(args)} numbers, got {value!r}")
        inner = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        return tuple(_coerce(v, a, key) for v, a in zip(value, inner))
    if origin is list:  # a single value stands for a list of one (run.loggers=mlflow)
        items = value if isinstance(value, (list, tuple)) else [value]
        (inner_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, inner_tp, key) for v in items]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key {key} must be a mapping, got {value!r}")
        for k in value:
            if not isinstance(k, str):
                raise UserError(f"config key {key} must have names as keys, got {k!r}")
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
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads "1e-3" without a dot as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise UserError(f"config key {key} must be a number, got {value!r}")
        if not math.isfinite(number):
            raise UserError(f"config key {key} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"config key {key} must be a string, got {value!r}")
        return value
    return value


# Keys whose value may be ``auto`` (or null), resolved here on this machine; the run's config.yaml records
# the number that was used.
_AUTO = {"data.workers": auto_workers}


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
        if f"{prefix}{key}" in _AUTO and (value is None or value == "auto"):
            value = _AUTO[f"{prefix}{key}"]()
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


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
    _validate_optim(cfg, model)
    _validate_loop(cfg, check_paths)


def _validate_model(cfg: TrainConfig, check_paths: bool) -> Any:
    """model.*; returns the architecture built on the meta device (no memory, no weights) with the
    recipe's options, so the other checks can ask it what it supports."""
    from ..models import list_models

    m = cfg.model
    arch = m.name.partition(".")[0]
    if arch not in list_models():
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
    built = _meta_model(arch, m)
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


def _meta_model(arch: str, m: ModelConfig) -> Any:
    import torch

    from ..models import build_model, get_variant

    cls, names = _option_names(arch)
    defaults = get_variant(arch).kwargs
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
    from ..weights.registry import find_tag, list_tags

    entry = find_tag(src)
    if entry is not None:
        if entry.arch != arch:
            raise UserError(
                f"config key model.pretrained: weights {src} are for {entry.arch}, not model.name={arch}"
            )
        return
    if src.startswith(("http://", "https://")) or not check_paths:
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


def _validate_data(cfg: TrainConfig, check_paths: bool, model: Any) -> None:
    from ..data import datasets
    from ..data.randaugment import parse_randaugment

    d = cfg.data
    name = d.dataset.lower().replace("_", "-")
    datasets.find_dataset(d.dataset)  # data/catalog.py: UserError naming the known datasets
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
    from .optim import _cpu_fused_adamw, layer_ids

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
    if o.fused and o.name == "adamw" and cfg.train.device == "cpu" and not _cpu_fused_adamw():
        raise UserError("config key optim.fused: this torch has no fused AdamW for CPU; set optim.fused=null")
    s = cfg.schedule
    _check(s.name in ("cosine", "constant"), "schedule.name", "must be cosine or constant", s.name)
    _check(
        0 <= s.warmup_epochs <= cfg.epochs,
        "schedule.warmup_epochs",
        f"must be in [0, epochs={cfg.epochs}]",
        s.warmup_epochs,
    )
    _check(s.min_lr >= 0, "schedule.min_lr", "must be >= 0", s.min_lr)


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
        _check_run_dir(Path(r.dir).expanduser())


def _check_run_dir(run_dir: Path) -> None:
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


def load_config(
    path: str | Path | None,
    overrides: list[str] = (),
    *,
    check_paths: bool = True,
    resuming: bool | None = None,
) -> TrainConfig:
    """Read, override, type-check and validate a recipe. Raises UserError before any work is done.

    With ``check_paths`` (a run on this machine) the paths become absolute (:func:`absolute_paths`).
    ``resuming``: a checkpoint will be restored (see :func:`validate`); None: when ``run.dir`` holds one
    and ``run.auto_resume`` is on, as ``train`` decides without ``--fresh``."""
    raw = read_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, list(overrides))
    cfg = _build(TrainConfig, raw, "")
    data_raw = raw.get("data")
    if not (isinstance(data_raw, dict) and "crop_mode" in data_raw) and cfg.data.img_size >= 384:
        # unset: the official evaluation, which warps the whole image at 384 px and up (build_transform)
        cfg.data.crop_mode = "squash"
    if resuming is None:
        from .rundir import has_checkpoint

        resuming = check_paths and cfg.run.auto_resume and has_checkpoint(Path(cfg.run.dir).expanduser())
    validate(cfg, check_paths=check_paths, resuming=resuming)
    if check_paths:
        absolute_paths(cfg)
    return cfg


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def absolute_paths(cfg: TrainConfig) -> None:
    """The recipe's paths made absolute against the working folder of the command that typed them
    (``data.root``, a ``data.class_list`` file, ``model.pretrained`` when it is a file or folder,
    ``run.dir``).

    The resolved recipe is stored in the run's config.yaml and checkpoints and read later from anywhere:
    ``convnext evaluate --weights runs/pets`` in another folder, an exported file's validation split, a
    ``--resume`` from a job script. A relative ``data.root=my_data`` there would name another folder."""
    from ..weights.registry import find_tag

    d = cfg.data
    if d.root:
        d.root = _absolute(d.root)
    if d.class_list not in (None, "imagenet1k", "folders"):
        d.class_list = _absolute(d.class_list)
    src = cfg.model.pretrained
    if src and find_tag(src) is None and "://" not in src and Path(src).expanduser().exists():
        cfg.model.pretrained = _absolute(src)
    cfg.run.dir = _absolute(cfg.run.dir)


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


def rebase_paths(cfg: TrainConfig, run_dir: Path) -> TrainConfig:
    """A run recorded before paths were stored absolute, found at ``run_dir``: its relative ``data.root`` and
    ``data.class_list`` were typed in the folder its relative ``run.dir`` was, which ``run_dir`` reveals
    (``runs/pets`` found at /home/me/project/runs/pets: /home/me/project)."""
    rel = Path(cfg.run.dir)
    here = Path(os.path.abspath(run_dir))
    n = len(rel.parts)
    if rel.is_absolute() or n == 0 or ".." in rel.parts or here.parts[-n:] != rel.parts:
        return cfg
    base = Path(*here.parts[:-n])
    d = cfg.data
    if d.root and not Path(d.root).expanduser().is_absolute():
        d.root = str(base / d.root)
    listed = d.class_list not in (None, "imagenet1k", "folders")
    if listed and not Path(d.class_list).expanduser().is_absolute():
        d.class_list = str(base / d.class_list)
    return cfg


def resolve_config(
    config: str | None,
    overrides: list[str] | None = None,
    resume: str | Path | None = None,
    *,
    fresh: bool = False,
) -> TrainConfig:
    """The run's config: the recipe ``config`` (a bundled name or a file) with ``overrides``, else the
    resolved recipe ``resume``'s checkpoint carries (``convnext train --resume last.pth`` needs no more).
    ``fresh``: the run starts over (``--fresh``), so ``model.pretrained`` must be there even when the run
    folder holds a checkpoint.

    Here, not in train.py, so that ``convnext train --dry-run`` resolves a recipe without the training
    loop (only a resume reads a checkpoint)."""
    if config:
        return load_config(config, overrides or [], resuming=True if resume else False if fresh else None)
    if resume is None:
        raise UserError(
            "pass --config NAME (a bundled recipe, `convnext recipes` lists them, or a YAML file), or "
            "--resume PATH to continue a run"
        )
    from .checkpoint import load_train_checkpoint

    cfg = config_from_dict(apply_overrides(load_train_checkpoint(resume)["config"], overrides or []))
    validate(cfg, resuming=True)
    absolute_paths(cfg)  # an override typed now (data.root=moved_data) is relative to this folder
    return cfg
