"""Plain dicts (YAML, a checkpoint's ``config``) to the typed recipe and back: every key known, every value
of its field's type, one sentence naming the key otherwise."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ..data.config import auto_workers
from ..errors import UserError
from .schema import TrainConfig
from .validate import validate


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


def build(cls: type, raw: Any, prefix: str) -> Any:
    """The dataclass ``cls`` (a section, or TrainConfig) from the plain dict ``raw``; ``prefix`` names the
    section in messages (``"optim."``)."""
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
            kwargs[key] = build(tp, value if value is not None else {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def config_from_dict(raw: dict, *, check_paths: bool = False) -> TrainConfig:
    """The typed config back from a checkpoint's plain dict."""
    cfg = build(TrainConfig, raw, "")
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
