"""Reading a checkpoint file without running code, and without trusting its sizes.

``torch.load(weights_only=True)`` or safetensors only. Before torch reads a zip archive (torch.save's
format) we check its central directory: a pickle larger than a state dict's ever is (a decompression bomb
inflates gigabytes there), and records or storages whose declared sizes exceed the file, are refused
before anything is inflated. A pickle that would import a callable is refused with a sentence naming it.
torch has no such checks (it inflates the pickle whole, and with ``mmap`` reads a storage past its
record), hence this module.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pickle
import pickletools
import re
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..data.preprocessing import Preprocessing
from ..errors import UserError

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
MAX_PICKLE_BYTES = 64 << 20  # a ConvNeXt-H state dict's pickle is ~100 KB; 64 MiB is far beyond any

# What a plain torch.save of tensors and containers imports; anything else in a pickle is code.
_SAFE_GLOBAL = re.compile(
    r"^(torch[. ].*|collections (OrderedDict|defaultdict)|_codecs encode|builtins (set|frozenset))$"
)
# Plain data that official training checkpoints carry ("args": the argparse Namespace of the run).
# Unpickling it only sets attributes; nothing is called.
_ALLOWED_GLOBALS = [argparse.Namespace]
# Bytes per element of the storage types torch.save names in its pickle.
_ITEMSIZE = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
    "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
    "ComplexDoubleStorage": 16, "ComplexFloatStorage": 8, "UntypedStorage": 1,
}  # fmt: skip


# ------------------------------------------------------------------------------------ pickle safety scan
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
    except Exception:  # garbage after the globals we already saw; the caller decides
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
                data = z.read(name) if name else b""  # size-checked by check_archive already
            return [g for g in _pickle_globals(data) if not _SAFE_GLOBAL.match(g)]
        try:
            return list(scan(path))
        except Exception:  # a damaged archive; the caller reports it as unreadable
            return []
    return [g for g in _pickle_globals(path.read_bytes()) if not _SAFE_GLOBAL.match(g)]


# ----------------------------------------------------------------------------------- archive size checks
class _Stub:
    """Stands in for every global of a pickle read only for its storage records: nothing is imported or
    called, every operation on it is a no-op."""

    name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stub:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Stub:
        return _Stub()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _StorageScan(pickle.Unpickler):
    """Collects the (key, storage type, element count) of every tensor storage a torch.save pickle names."""

    def __init__(self, data: bytes) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self.storages: list[tuple[str, str, int]] = []

    def find_class(self, module: str, name: str) -> type:
        return type(name, (_Stub,), {"name": name})

    def persistent_load(self, pid: Any) -> None:
        if isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage":
            kind = getattr(pid[1], "name", "")
            self.storages.append((str(pid[2]), str(kind), int(pid[4])))


def check_archive(path: Path) -> None:
    """Refuse a torch.save zip whose central directory or storage records lie about their sizes (read
    from the directory and the capped pickle only: nothing of the tensors is inflated)."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            pkl = next((i for i in infos if i.filename.endswith("data.pkl")), None)
            if pkl is not None and pkl.file_size > MAX_PICKLE_BYTES:
                raise UserError(
                    f"refused {path}: its pickle {pkl.filename} inflates to {pkl.file_size / 2**20:.0f} MiB "
                    f"(a state dict's is well under {MAX_PICKLE_BYTES >> 20} MiB): a corrupt or crafted file"
                )
            for i in infos:
                if i.file_size > size or i.header_offset + i.compress_size > size:
                    raise UserError(
                        f"refused {path}: its record {i.filename} declares {i.file_size} bytes, more than "
                        f"the whole file ({size} bytes): a corrupt or crafted archive"
                    )
            if pkl is None:
                return  # not torch.save's layout; torch.load names the problem
            data = z.read(pkl)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return  # torch.load reports a damaged archive in its own words (turned into one sentence)
    records = {i.filename: i.file_size for i in infos}
    prefix = pkl.filename[: -len("data.pkl")]
    scan = _StorageScan(data)
    try:
        scan.load()
    except Exception:  # an odd pickle: torch's weights-only unpickler judges it
        return
    for key, kind, numel in scan.storages:
        record = f"{prefix}data/{key}"
        itemsize = _ITEMSIZE.get(kind)
        if itemsize is None:
            continue
        if record not in records:
            raise UserError(f"refused {path}: its pickle names a tensor storage {record} the archive lacks")
        if records[record] != numel * itemsize:
            raise UserError(
                f"refused {path}: storage {record} declares {numel * itemsize} bytes but the archive holds "
                f"{records[record]}: a corrupt or crafted file"
            )


# --------------------------------------------------------------------------------------------- reading
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


def read_file(path: Path) -> tuple[Any, dict[str, str]]:
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
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        check_archive(path)
    try:
        with warnings.catch_warnings():  # torch's note on pickle protocols is noise for a user
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            with _allow(_ALLOWED_GLOBALS):
                # mmap: a 2.6 GB huge checkpoint is paged in as it is copied, not read whole first
                return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip), {}
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
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "zip" in msg or "PytorchStreamReader" in msg:
            raise UserError(
                f"{path} is truncated or corrupt (its zip archive cannot be read); fetch it again"
            ) from None
        raise UserError(f"{path} is corrupt: torch cannot rebuild its tensors ({msg})") from None
    except (EOFError, ValueError, OSError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise UserError(
            f"{path} is not a readable PyTorch or safetensors checkpoint ({type(e).__name__}): "
            "it is truncated or not a checkpoint at all; fetch it again"
        ) from None
    except (IndexError, KeyError, TypeError, AttributeError, struct.error, OverflowError, MemoryError) as e:
        # Random bytes drive torch's weights-only unpickler (which runs no code) into any of these.
        raise UserError(
            f"{path} is not a PyTorch or safetensors checkpoint (garbled pickle: {type(e).__name__})"
        ) from None


# ------------------------------------------------------------------------------------ Hugging Face folders
def hf_weights(folder: Path) -> Path:
    """The weights file of a Hugging Face model folder."""
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise UserError(
        f"folder {folder} has no {' or '.join(HF_WEIGHT_FILES)} (a Hugging Face model folder has one)"
    )


def hf_preprocessing(folder: Path) -> Preprocessing | None:
    """The eval settings of a Hugging Face folder's ``preprocessor_config.json`` (ConvNextImageProcessor);
    None when it has none we can read. transformers' rule: below 384 px the shorter side
    goes to size / crop_pct and the centre size x size is cropped; from 384 px the image is warped to
    size x size whatever crop_pct says (squash, the official 384 evaluation)."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return _timm_preprocessing(folder)  # a timm repo (``timm/convnext_*``): config.json's pretrained_cfg
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None
    size = cfg.get("size") if isinstance(cfg, dict) else None
    if isinstance(size, dict):
        size = size.get("shortest_edge") or size.get("height")
    interpolation = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(cfg.get("resample", 3))
    if not isinstance(size, int) or size <= 0 or interpolation is None:
        return None
    squash = size >= 384
    mean, std = cfg.get("image_mean", (0.485, 0.456, 0.406)), cfg.get("image_std", (0.229, 0.224, 0.225))
    return Preprocessing(
        img_size=size,
        crop_pct=1.0 if squash else float(cfg.get("crop_pct") or 224 / 256),
        crop_mode="squash" if squash else "center",
        interpolation=interpolation,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )


def hf_class_names(folder: Path) -> list[str] | None:
    """The class names of config.json's id2label, or None when absent or transformers' LABEL_i defaults."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{cfg_path} is not valid JSON ({e})") from None
    # transformers' id2label, else timm's label_names (a list, or a dict like id2label; top level, as timm's
    # save_for_hf writes it, or inside pretrained_cfg)
    id2label = (
        cfg.get("id2label") or cfg.get("label_names") or (cfg.get("pretrained_cfg") or {}).get("label_names")
    )
    if isinstance(id2label, list):
        id2label = dict(enumerate(id2label))
    id2label = {str(k): v for k, v in (id2label or {}).items()}
    names = [id2label.get(str(i)) for i in range(len(id2label))]
    if not names or any(n is None for n in names) or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return None
    return names  # type: ignore[return-value]


def _timm_preprocessing(folder: Path) -> Preprocessing | None:
    """The eval settings of a timm Hub folder (config.json's ``pretrained_cfg``, timm's layout); None when
    it has none (a transformers folder without preprocessor_config.json, a partial config)."""
    path = folder / "config.json"
    try:
        cfg = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None
    pre = cfg.get("pretrained_cfg") if isinstance(cfg, dict) else None
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct")
    if not isinstance(pre, dict) or any(pre.get(k) is None for k in keys):
        return None
    return Preprocessing.from_timm({**pre, "crop_mode": pre.get("crop_mode") or "center"})
