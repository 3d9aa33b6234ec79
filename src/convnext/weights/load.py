"""Load any ConvNeXt checkpoint into our models, safely: files, URLs, registry tags, HF folders.

Reading never runs code: ``torch.load(weights_only=True)`` or safetensors. A pickle that would import a
callable is refused with a sentence naming it. Downloads use torch.hub's cache (``$TORCH_HOME/hub/
checkpoints``), so a file fetched once is never fetched again and works offline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import pickle
import pickletools
import re
import socket
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from ..errors import UserError
from . import formats
from .registry import WeightEntry, find_tag, list_tags

log = logging.getLogger("convnext.weights")

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
DOWNLOAD_TIMEOUT_S = 60  # per connection attempt / read, not for the whole download


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
    entry: WeightEntry | None = None
    arch: str | None = None  # recorded in the file, the tag, or inferred from the shapes
    ema: bool = False
    dropped_classifier: bool = False
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # skipped (strict=False only): shapes differ
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    """A checkpoint read and renamed to our parameter names, not yet loaded into a model."""

    state_dict: dict[str, Tensor]
    info: CheckpointInfo


# ---------------------------------------------------------------------------------------------- fetching


def fetch(url: str, *, progress: bool = True) -> Path:
    """The local copy of ``url`` in torch.hub's cache, downloading it (with a progress bar) only if absent.

    torch.hub's own ``load_state_dict_from_url`` would also ``torch.load`` the file, and its errors are
    tracebacks; we want the file (it may be safetensors) and one sentence when the network is missing.
    """
    name = Path(urlparse(url).path).name
    if not name:
        raise UserError(f"cannot tell a file name from the URL {url}; download it by hand and pass the file")
    dst = Path(torch.hub.get_dir()) / "checkpoints" / name
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    m = torch.hub.HASH_REGEX.search(name)  # "name-<sha256 prefix>.ext": torch.hub's check_hash convention
    hash_prefix = m.group(1) if m and m.group(1) else None
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # torch.hub has no timeout: a dropped network would hang
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix, progress=progress)
    except (URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(
            f"could not download {url} ({reason}); download it by hand and pass the file's path instead "
            f"(or put it in {dst.parent})"
        ) from None
    except RuntimeError as e:
        if "hash" in str(e):
            raise UserError(f"the file downloaded from {url} is corrupt ({e}); try again") from None
        raise
    finally:
        socket.setdefaulttimeout(previous)
    return dst


def resolve(src: str | Path) -> tuple[Path, WeightEntry | None]:
    """The local file (or HF folder) behind a path, URL or registry tag."""
    s = str(src)
    entry = find_tag(s)
    if entry is not None:
        return fetch(entry.url), entry
    if s.startswith(("http://", "https://")):
        return fetch(s), None
    path = Path(s).expanduser()
    if path.exists():
        return path, None
    if (
        "/" not in s
        and "\\" not in s
        and Path(s).suffix not in (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
    ):
        arch = s.partition(".")[0]
        known = list_tags(arch) or list_tags()[:6]
        raise UserError(f"{s!r} is neither a file nor a known weights tag; tags: {', '.join(known)}")
    raise UserError(f"checkpoint {s} does not exist")


# ----------------------------------------------------------------------------------------------- reading

# What a plain torch.save of tensors and containers imports; anything else in a pickle is code.
_SAFE_GLOBAL = re.compile(
    r"^(torch[. ].*|collections (OrderedDict|defaultdict)|_codecs encode|builtins (set|frozenset))$"
)


def _pickle_globals(data: bytes) -> list[str]:
    """The callables a pickle would import, found by reading its opcodes (never executing them)."""
    found, strings = [], []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.append(str(arg))
            elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(str(arg))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]} {strings[-1]}")
    except Exception:  # noqa: BLE001 - garbage after the globals we already saw; the caller decides
        pass
    return found


def _unsafe_globals(path: Path) -> list[str]:
    """What a checkpoint would import beyond tensors and containers: torch's own scan for torch.save
    archives; for a legacy raw pickle (torch has no scanner for those) our opcode walk."""
    if zipfile.is_zipfile(path):
        scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
        if scan is None:
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.read(name) if name else b""
            return [g for g in _pickle_globals(data) if not _SAFE_GLOBAL.match(g)]
        try:
            return list(scan(path))
        except Exception:  # noqa: BLE001 - a damaged archive; the caller reports it as unreadable
            return []
    return [g for g in _pickle_globals(path.read_bytes()) if not _SAFE_GLOBAL.match(g)]


# Plain data that official training checkpoints carry ("args": the argparse Namespace of the run).
# Unpickling it only sets attributes; nothing is called.
_ALLOWED_GLOBALS = [argparse.Namespace]


def _allow(globals_: list) -> contextlib.AbstractContextManager:
    """torch's scoped allow-list (torch >= 2.5); on torch 2.4 the process-wide one."""
    if hasattr(torch.serialization, "safe_globals"):
        return torch.serialization.safe_globals(globals_)
    torch.serialization.add_safe_globals(globals_)
    return contextlib.nullcontext()


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < n < path.stat().st_size


def _read_file(path: Path) -> tuple[Any, dict[str, str]]:
    """The object in a checkpoint file and, for safetensors, its metadata; UserError for anything unsafe."""
    size = path.stat().st_size
    if size == 0:
        raise UserError(
            f"checkpoint {path} is empty (0 bytes): the download or copy did not finish; fetch it again"
        )
    if path.suffix == ".safetensors" or _is_safetensors(path):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path} is not a readable safetensors file ({e}); it may be truncated") from None
    try:
        with warnings.catch_warnings():  # torch's note on pickle protocols is noise for a user
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            with _allow(_ALLOWED_GLOBALS):
                # mmap: a 2.6 GB huge checkpoint is paged in as it is copied, not read whole first
                mmap = zipfile.is_zipfile(path)
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap), {}
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL (\S+)", str(e))
        culprits = [m.group(1)] if m else _unsafe_globals(path)
        if culprits:
            raise UserError(
                f"refused to load {path}: it is not a plain weights file, its pickle would import and run "
                f"{culprits[0]} (code execution), and nothing was executed; if you trust its author, "
                "re-save its state_dict with torch.save or as .safetensors"
            ) from None
        raise UserError(f"{path} is not a PyTorch or safetensors checkpoint (unreadable pickle)") from None
    except RuntimeError as e:
        if "zip" in str(e) or "PytorchStreamReader" in str(e):
            raise UserError(
                f"{path} is truncated or corrupt (its zip archive cannot be read); fetch it again"
            ) from None
        raise
    except (EOFError, ValueError, OSError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise UserError(
            f"{path} is not a readable PyTorch or safetensors checkpoint ({type(e).__name__}): "
            "it is truncated or not a checkpoint at all; fetch it again"
        ) from None
    except (IndexError, KeyError, TypeError, AttributeError, struct.error, OverflowError) as e:
        # Random bytes drive torch's weights-only unpickler (which runs no code) into any of these.
        raise UserError(
            f"{path} is not a PyTorch or safetensors checkpoint (garbled pickle: {type(e).__name__})"
        ) from None


def read_checkpoint(src: str | Path) -> dict:
    """The raw content of a checkpoint (file, URL, tag or HF folder), read without running any code."""
    path, _ = resolve(src)
    if path.is_dir():
        path = _hf_weights(path)
    obj, _ = _read_file(path)
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a checkpoint dictionary")
    return obj


def _hf_weights(folder: Path) -> Path:
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise UserError(
        f"folder {folder} has no {' or '.join(HF_WEIGHT_FILES)} (a Hugging Face model folder has one)"
    )


def _hf_class_names(folder: Path) -> list[str] | None:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{cfg_path} is not valid JSON ({e})") from None
    id2label = cfg.get("id2label") or {}
    names = [id2label.get(str(i)) for i in range(len(id2label))]
    if not names or any(n is None for n in names) or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return None
    return names  # type: ignore[return-value]


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _unwrap(obj: Any, path: Path, ema: bool) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict inside a checkpoint container, and what the container says about it."""
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict")
    meta: dict[str, Any] = {}
    for key in ("arch", "class_names"):
        if key in obj and not isinstance(obj[key], Tensor):
            meta[key] = obj[key]
    if obj.get("format") == "convnext-train":
        meta["container"] = "convnext-train"
        meta.update({k: obj[k] for k in ("epoch", "step", "metrics") if k in obj})
    if ema:
        sd = obj.get("model_ema")
        if not _is_state_dict(sd):
            raise UserError(
                f"{path} has no EMA weights ('model_ema'); load it without ema "
                "(the official *_ema releases already hold the EMA weights as 'model')"
            )
        return sd, meta
    for key in ("model", "state_dict"):  # official / ours / timm training / Lightning containers
        if _is_state_dict(obj.get(key)):
            return obj[key], meta
    if _is_state_dict(obj):
        return obj, meta
    top = ", ".join(map(str, list(obj)[:6]))
    raise UserError(
        f"{path} holds no state dict (looked under 'model' and 'state_dict'); top-level keys: {top}"
    )


def prepare(src: str | Path | dict, *, ema: bool = False) -> Prepared:
    """Read and rename a checkpoint, without a model: what ``create_model`` needs to size the classifier.

    ``src`` may also be an in-memory checkpoint or state dict (e.g. ``timm_model.state_dict()``).
    """
    class_names: list[str] | None = None
    entry: WeightEntry | None = None
    st_meta: dict[str, str] = {}
    if isinstance(src, dict):
        obj, path, src = src, Path("<state dict>"), "<state dict>"
    else:
        path, entry = resolve(src)
        if path.is_dir():
            class_names = _hf_class_names(path)
            path = _hf_weights(path)
        obj, st_meta = _read_file(path)
    sd, meta = _unwrap(obj, path, ema)
    sd = formats.strip_prefixes(sd)
    try:
        fmt = formats.detect_format(sd)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    ours = formats.to_ours(sd, fmt)
    if "class_names" in st_meta:
        try:
            class_names = json.loads(st_meta["class_names"])
        except ValueError:
            pass
    class_names = meta.get("class_names") or class_names
    num_classes = formats.num_classes_of(ours)
    if class_names is None and entry is not None and entry.num_classes == 1000:
        class_names = _imagenet_names()
    if class_names is not None and num_classes is not None and len(class_names) != num_classes:
        class_names = None  # stale names; better none than wrong ones
    info = CheckpointInfo(
        source=str(src),
        path=str(path),
        format=meta.get("container", fmt),
        num_classes=num_classes,
        class_names=class_names,
        entry=entry,
        arch=meta.get("arch")
        or st_meta.get("arch")
        or (entry.arch if entry else None)
        or formats.infer_arch(ours),
        ema=ema,
        metadata={k: v for k, v in meta.items() if k not in ("arch", "class_names", "container")},
    )
    return Prepared(ours, info)


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
    ema: bool = False,
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
    if has_head and (not model_head or sd["head.weight"].shape != target["head.weight"].shape):
        n_ckpt = sd["head.weight"].shape[0]
        if model_head:
            n_model = target["head.weight"].shape[0]
            log.warning(
                "%s has a %d-class classifier, the model %d classes: the classifier starts fresh",
                where,
                n_ckpt,
                n_model,
            )
        else:
            log.warning(
                "%s has a %d-class classifier, the model none: the classifier is not used", where, n_ckpt
            )
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
        info.dropped_classifier, info.class_names = True, None
        allowed_missing |= {k for k in target if k.startswith("head.")}
    elif not has_head and not getattr(model, "features_only", False):
        fresh = {k for k in target if k.startswith(("head.", "norm.")) and k not in sd}
        if fresh:
            log.warning(
                "%s holds a backbone without classifier: %s start fresh",
                where,
                "the classifier and final norm"
                if any(k.startswith("norm.") for k in fresh)
                else "the classifier",
            )
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
    sd = {k: v for k, v in sd.items() if k not in mismatched and k not in unexpected}
    model.load_state_dict(sd, strict=False, assign=assign)
    info.missing, info.unexpected, info.mismatched = missing, unexpected, mismatched
    return info
