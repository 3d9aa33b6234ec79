"""Load any ConvNeXt checkpoint into our models: ``prepare`` (read, unwrap, check, rename) and
``load_checkpoint`` (fit into a model, one sentence for any mismatch).

Where the bytes come from is ``fetch.py``, how they are read safely ``files.py``, what containers hold
``containers.py``, how names map ``formats.py``; this module joins them.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..data.preprocessing import TIMM_KEYS, Preprocessing
from ..errors import UserError
from ..messages import warn
from . import containers, formats
from .fetch import fetch, is_run_dir, resolve, run_checkpoint
from .files import hf_class_names, hf_preprocessing, hf_weights, read_file
from .formats import StateDict
from .registry import WeightEntry, find_file, torchvision_entry

log = logging.getLogger(__name__)  # convnext.weights.load: messages.py says how the tree is shown

__all__ = ["CheckpointInfo", "Prepared", "fetch", "load_checkpoint", "prepare", "read_checkpoint", "resolve"]


@dataclass
class CheckpointInfo:
    """What was loaded. ``class_names`` name the model's outputs after loading (None when unknown or when
    the checkpoint's classifier was dropped for fine-tuning)."""

    source: str
    path: str
    format: (
        str  # naming: official | timm | torchvision | transformers | transformers-v2 | fcmae | convnext-train
    )
    num_classes: int | None  # the checkpoint's classifier size; None: it has none (a backbone)
    class_names: list[str] | None = None
    entry: WeightEntry | None = None  # the registry release (by tag, URL or the release's file name)
    arch: str | None = None  # recorded in the file, the tag, or inferred from the shapes
    ema: bool = False
    dropped_classifier: bool = False
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # skipped (strict=False only): shapes differ
    metadata: dict[str, Any] = field(default_factory=dict)
    # the eval settings the weights were made for; None: unknown (defaults apply)
    preprocessing: Preprocessing | None = None
    run_dir: str | None = None  # the training run folder the checkpoint came from, when one was given

    @property
    def data_config(self) -> dict[str, Any] | None:
        """``preprocessing`` in timm's ``resolve_data_config`` layout, for the timm boundary (presets,
        ``pretrained_cfg``, the files ``convert`` writes); None: unknown."""
        return self.preprocessing.to_timm() if self.preprocessing is not None else None


@dataclass
class Prepared:
    """A checkpoint read and renamed to our parameter names, not yet loaded into a model."""

    state_dict: dict[str, Tensor]
    info: CheckpointInfo
    # a training checkpoint's recorded recipe (its plain dict), so a reader needs not read the file again
    run_config: dict[str, Any] | None = None


def read_checkpoint(src: str | Path) -> dict:
    """The raw content of a checkpoint (file, URL, tag, HF or run folder), read without running any code."""
    path, _ = resolve(src)
    if is_run_dir(path):
        path = run_checkpoint(path)
    elif path.is_dir():
        path = hf_weights(path)
    obj, _ = read_file(path)
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a checkpoint dictionary")
    return obj


def prepare(src: str | Path | dict, *, ema: bool | None = None) -> Prepared:
    """Read, check and rename a checkpoint, without a model: what ``create_model`` needs to size the
    classifier. ``src`` may also be an in-memory checkpoint or state dict (``timm_model.state_dict()``).
    NaN/inf or non-float weights are refused here, so every path (predict, evaluate, convert, fine-tuning)
    refuses them before anything is built or written. ``ema``: True the EMA weights, False the model's,
    None (default) the ones a training run ranked its best by (the EMA for ``checkpoint.best_by: ema``, so
    a run folder gives the accuracy its summary printed); ``info.ema`` says which."""
    class_names: list[str] | None = None
    entry: WeightEntry | None = None
    st_meta: dict[str, str] = {}
    run_dir: Path | None = None
    hf_eval: Preprocessing | None = None  # a Hugging Face folder's preprocessor_config.json
    if isinstance(src, dict):
        obj, path, src = src, Path("<state dict>"), "<state dict>"
    else:
        path, entry = resolve(src)
        if is_run_dir(path):
            run_dir, path = path, run_checkpoint(path)
        elif path.is_dir():
            class_names = hf_class_names(path)
            hf_eval = hf_preprocessing(path)
            path = hf_weights(path)
        obj, st_meta = read_file(path)
    sd, meta = containers.unwrap(obj, str(path), ema)
    ema = meta.pop("ema")
    sd = containers.strip_prefixes(sd)
    containers.check_tensors(sd, str(path))
    try:
        fmt = formats.detect_format(sd)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    ours = formats.to_ours(sd, fmt)
    for key in ("class_names", "data_config"):  # what `convnext convert` records in safetensors metadata
        if key in st_meta:
            try:
                meta.setdefault(key, json.loads(st_meta[key]))
            except ValueError:
                pass
    class_names = meta.get("class_names") or class_names
    num_classes = formats.num_classes_of(ours)
    shapes_arch = formats.infer_arch(ours)
    if entry is None and run_dir is None and str(src) != "<state dict>":
        known = find_file(str(src))  # a release downloaded by hand keeps its file name
        if known is not None and known.arch == shapes_arch and known.num_classes == (num_classes or 0):
            entry = known
    if class_names is None and entry is not None and entry.num_classes == 1000:
        class_names = _imagenet_names()
    if class_names is not None and num_classes is not None and len(class_names) != num_classes:
        class_names = None  # stale names; better none than wrong ones
    arch = meta.get("arch") or st_meta.get("arch") or (entry.arch if entry else None) or shapes_arch
    info = CheckpointInfo(
        source=str(src),
        path=str(path),
        format=meta.get("container", fmt),
        num_classes=num_classes,
        class_names=class_names,
        entry=entry,
        arch=arch,
        ema=ema,
        metadata={k: v for k, v in meta.items() if k not in _INFO_KEYS},
        # metadata["model"]: a training run's model section (options the architecture was built with)
        preprocessing=_preprocessing(entry, meta.get("data"), fmt, arch, meta.get("data_config"), hf_eval),
        run_dir=str(run_dir) if run_dir else None,
    )
    recorded = obj.get("config") if info.format == containers.TRAIN_FORMAT else None
    return Prepared(ours, info, recorded if isinstance(recorded, dict) else None)


# container keys that become CheckpointInfo fields rather than metadata
_INFO_KEYS = ("arch", "class_names", "container", "data", "data_config")


def _preprocessing(
    entry: WeightEntry | None,
    run_data: dict[str, Any] | None,
    fmt: str,
    arch: str | None,
    recorded: dict[str, Any] | None = None,
    hf_eval: Preprocessing | None = None,
) -> Preprocessing | None:
    """The eval settings loaded weights were made for: the registry release's, a training run's ``data:``
    section, those ``convnext convert`` recorded (timm's keys, in the file's metadata), a Hugging Face or
    timm folder's own, or torchvision's preset for weights in torchvision's layout; None when nothing says
    (defaults apply)."""
    if entry is not None:
        return entry.preprocessing
    if run_data is not None:
        return Preprocessing.from_json(run_data)
    if isinstance(recorded, dict) and all(k in recorded for k in TIMM_KEYS):
        return Preprocessing.from_timm(recorded)
    if hf_eval is not None:
        return hf_eval
    if fmt == "torchvision" and arch:
        tv = torchvision_entry(arch)
        if tv is not None:
            return tv.preprocessing
    return None


def _imagenet_names() -> list[str]:
    from ..data.classes import imagenet1k_classes  # the synset list shipped with the package

    return [name for _, name in imagenet1k_classes()]


# ----------------------------------------------------------------------------------------------- loading


def _short(keys: list[str], n: int = 4) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_checkpoint(
    model: nn.Module,
    src: str | Path | dict | Prepared,
    *,
    ema: bool | None = None,
    strict: bool = True,
    assign: bool = False,
) -> CheckpointInfo:
    """Load ``src`` (file, URL, tag, HF folder, in-memory state dict, or a ``prepare``d checkpoint).

    A classifier of another size than the model's is dropped with one logged warning (fine-tuning); so is
    a missing one (a backbone checkpoint). Everything else must match exactly unless ``strict=False``;
    a mismatch is one sentence with the first few names. ``assign=True`` takes the tensors by reference,
    for a model built on the meta device (no time spent on a random init that is overwritten).
    """
    prepared = src if isinstance(src, Prepared) else prepare(src, ema=ema)
    sd, info = dict(prepared.state_dict), prepared.info
    target = model.state_dict()
    where = info.source
    if getattr(model, "features_only", False):  # a detection backbone keeps no classifier or final norm
        sd = {k: v for k, v in sd.items() if not k.startswith(("head.", "norm."))}
    has_head, model_head = "head.weight" in sd, "head.weight" in target
    allowed_missing: set[str] = set()
    # said only once the weights are known to fit: a classifier of another width is a wrong architecture
    notes: list[tuple[str, tuple]] = []
    if has_head and (not model_head or sd["head.weight"].shape[0] != target["head.weight"].shape[0]):
        n_ckpt = sd["head.weight"].shape[0]
        if model_head:
            n_model = target["head.weight"].shape[0]
            msg = "%s has a %d-class classifier, the model %d classes: the classifier starts fresh"
            notes.append((msg, (where, n_ckpt, n_model)))
        else:
            notes.append(
                ("%s has a %d-class classifier, the model none: the classifier is not used", (where, n_ckpt))
            )
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
        info.dropped_classifier, info.class_names = True, None
        allowed_missing |= {k for k in target if k.startswith("head.")}
    elif not has_head and not getattr(model, "features_only", False):
        fresh = {k for k in target if k.startswith(("head.", "norm.")) and k not in sd}
        if fresh:
            what = (
                "the classifier and final norm"
                if any(k.startswith("norm.") for k in fresh)
                else "the classifier"
            )
            notes.append(("%s holds a backbone without classifier: %s start fresh", (where, what)))
        allowed_missing |= fresh
        info.class_names = None
    if getattr(model, "features_only", False):
        allowed_missing |= {k for k in target if re.match(r"norm\d\.", k)}

    missing = [k for k in target if k not in sd and k not in allowed_missing]
    unexpected = [k for k in sd if k not in target]
    mismatched = [k for k in sd if k in target and sd[k].shape != target[k].shape]
    if strict and (missing or unexpected or mismatched):
        ckpt_arch = formats.infer_arch(prepared.state_dict) or info.arch  # the shapes are the truth
        model_arch = getattr(model, "variant", None)
        if ckpt_arch and model_arch and ckpt_arch != model_arch:
            raise UserError(
                f"{where} holds {ckpt_arch} weights but the model is {model_arch}; "
                f"create the model as {ckpt_arch} or pass {model_arch} weights"
            )
        problems = []
        if mismatched:
            problems.append(
                f"{len(mismatched)} shape mismatches ("
                + ", ".join(
                    f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
                    for k in mismatched[:3]
                )
                + ")"
            )
        if missing:
            problems.append(f"{len(missing)} missing keys ({_short(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys ({_short(unexpected)})")
        shape = formats.describe_shape(prepared.state_dict)
        raise UserError(
            f"{where} ({info.format}, {shape}) does not fit {model_arch or type(model).__name__}: "
            + "; ".join(problems)
        )
    for msg, args in notes:
        log.warning(msg, *args)
    sd = {k: v for k, v in sd.items() if k not in mismatched and k not in unexpected}
    model.load_state_dict(sd, strict=False, assign=assign)
    info.missing, info.unexpected, info.mismatched = missing, unexpected, mismatched
    return info


def load_fitting(
    model: nn.Module, sd: StateDict, info: CheckpointInfo, fresh: set[str], notes: list[str]
) -> CheckpointInfo:
    """Load a whole-model state dict (a detector's, a segmenter's) whose every key must fit ``model`` but
    those in ``fresh`` (parts that start anew, e.g. another class count's classifiers): a misfit is one
    sentence with the counts and the first keys, and ``notes`` (what was left out) are said once each."""
    target = model.state_dict()
    missing = [k for k in target if k not in sd and k not in fresh]
    unexpected = [k for k in sd if k not in target]
    mismatched = [k for k in sd if k in target and sd[k].shape != target[k].shape]
    if missing or unexpected or mismatched:
        bad = mismatched[:2] + missing[:2] + unexpected[:2]
        raise UserError(
            f"{info.source} ({info.format}) does not fit {getattr(model, 'variant', 'the model')}: "
            f"{len(mismatched)} shape mismatches, {len(missing)} missing and {len(unexpected)} unexpected "
            f"keys (first: {', '.join(bad)})"
        )
    for note in notes:
        warn(f"{info.source}: {note}")
    model.load_state_dict(sd, strict=False)
    return info


def load_backbone(backbone: nn.Module, prepared: Prepared, fresh: str) -> CheckpointInfo:
    """A classifier's checkpoint (any we load) initialises a dense model's backbone; ``fresh`` names what
    starts anew (said once). timm's head variants' parts (``pre_logits``, ``norm_pre``) are the classifier's,
    not the trunk's, so they are left out."""
    extra = ("pre_logits.", "norm_pre.")
    sd = {k: v for k, v in prepared.state_dict.items() if not k.startswith(extra)}
    info = load_checkpoint(backbone, Prepared(sd, prepared.info, prepared.run_config))
    warn(f"{info.source} is a classification checkpoint: it initialises the backbone; {fresh} start fresh")
    info.class_names = None
    return info
