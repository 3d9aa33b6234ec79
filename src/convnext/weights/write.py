"""Weights back out: our state dict written as each ecosystem loads it (``convnext convert --to``).

ours: ``.safetensors`` (metadata arch, num_classes, class_names, eval settings) or ``.pth``
``{"model", "arch", "num_classes", "class_names"}``; official: ``{"model": state_dict}``, what the
official ``main.py --finetune/--resume`` reads; timm / torchvision: a plain state dict that
``timm.create_model(arch).load_state_dict`` / ``torchvision.models.<arch>().load_state_dict`` take with
strict=True; hf: a folder ``transformers``' ``from_pretrained`` loads by itself (config.json with
id2label, model.safetensors, preprocessor_config.json when the eval settings fit ConvNextImageProcessor).
Every file is written to a temporary name and renamed, so a failure leaves nothing behind.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data.preprocessing import Preprocessing
from ..errors import UserError
from . import formats

TARGETS = ("ours", "official", "timm", "torchvision", "hf")
FILE_SUFFIXES = {
    "ours": (".safetensors", ".pth", ".pt"),
    "official": (".pth", ".pt"),
    "timm": (".safetensors", ".pth", ".pt", ".bin"),
    "torchvision": (".pth", ".pt", ".safetensors"),
}


def check_destination(dst: Path, target: str, force: bool) -> None:
    """One sentence for a destination the target cannot write, before anything is read."""
    if target not in TARGETS:
        raise UserError(f"--to {target!r} is not one of {', '.join(TARGETS)}")
    if target == "hf":
        if dst.suffix in (".safetensors", ".pth", ".pt", ".bin"):
            raise UserError(
                f"--to hf writes a folder (config.json + model.safetensors), not a file like {dst}"
            )
        if dst.exists() and not dst.is_dir():
            raise UserError(f"{dst} exists and is not a folder; --to hf writes a folder")
    elif target == "timm" and not dst.suffix:  # a folder: timm's hub layout (config.json + model.safetensors)
        if dst.exists() and not dst.is_dir():
            raise UserError(
                f"{dst} exists and is not a folder; name a file ending in .safetensors or a folder"
            )
    elif dst.suffix not in FILE_SUFFIXES[target]:
        raise UserError(f"--to {target} output {dst} must end in {', '.join(FILE_SUFFIXES[target])}")
    if dst.exists() and not force:
        raise UserError(f"{dst} already exists; pass --force to overwrite it")
    sidecar = dst.with_suffix(".json")
    if target == "timm" and dst.suffix and sidecar.exists() and not force:
        raise UserError(
            f"{sidecar} (timm's config for {dst.name}) already exists; pass --force to overwrite it"
        )


def _write_failed(e: BaseException, dst: Path) -> UserError | None:
    """One sentence for a write the disk refused (full, quota, read-only, no permission), or None when ``e``
    is something else. torch.save wraps the OSError in a RuntimeError and safetensors raises its own error
    carrying only the OS message ("Permission denied (os error 13)"), so the chain and the text are both
    searched."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        text = str(cur)
        rust = re.search(r"\(os error (\d+)\)", text)
        code = cur.errno if isinstance(cur, OSError) else int(rust.group(1)) if rust else None
        if code in (errno.ENOSPC, errno.EDQUOT):
            return UserError(f"no space left on the device writing {dst}; nothing was written")
        if isinstance(cur, OSError) and cur.strerror:
            return UserError(f"cannot write {dst} ({cur.strerror}); nothing was written")
        if code is not None:
            return UserError(f"cannot write {dst} ({os.strerror(code)}); nothing was written")
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _atomic_file(dst: Path, write: Any) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, dst)
    except Exception as e:
        failed = _write_failed(e, dst)
        if failed is None:
            raise
        raise failed from None
    finally:
        tmp.unlink(missing_ok=True)


def _torch_save(obj: Any, tmp: Path) -> None:
    """torch.save through a Python file: a full disk then raises an OSError naming ENOSPC (given a path,
    torch's C++ writer says only "iostream error")."""
    with open(tmp, "wb") as f:
        torch.save(obj, f)


def _save(sd: dict[str, Tensor], dst: Path, metadata: dict[str, str] | None = None) -> None:
    def write(tmp: Path) -> None:
        if dst.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(sd, str(tmp), metadata=metadata)
        else:
            _torch_save(sd, tmp)

    _atomic_file(dst, write)


def write(
    sd: dict[str, Tensor],
    dst: Path,
    target: str,
    *,
    arch: str,
    class_names: list[str] | None,
    data_config: dict[str, Any] | None,
    source: str,
) -> None:
    """Write ``sd`` (our names, verified against ``arch``) to ``dst`` in ``target``'s layout."""
    sd = {k: v.detach().contiguous() for k, v in sd.items()}
    n_classes = formats.num_classes_of(sd) or 0
    if target == "ours":
        if dst.suffix == ".safetensors":
            meta = {"format": "convnext", "arch": arch, "num_classes": str(n_classes), "source": source}
            if class_names:
                meta["class_names"] = json.dumps(class_names)
            if data_config:
                meta["data_config"] = json.dumps(data_config)
            _save({k: v.clone() for k, v in sd.items()}, dst, meta)  # safetensors refuses shared storage
        else:
            obj = {
                "model": sd,
                "arch": arch,
                "num_classes": n_classes,
                "class_names": class_names,
                "data_config": data_config,
            }
            _atomic_file(dst, lambda tmp: _torch_save(obj, tmp))
    elif target == "official":
        _atomic_file(dst, lambda tmp: _torch_save({"model": formats.from_ours(sd, formats.OFFICIAL)}, tmp))
    elif target == "timm":
        out = {k: v.contiguous() for k, v in formats.from_ours(sd, target, arch).items()}
        cfg = timm_config(sd, arch, class_names, data_config)
        if dst.suffix:  # a file, and timm's config.json beside it as <name>.json
            _save(out, dst, {"format": "pt"})
            text = json.dumps(cfg, indent=2) + "\n"
            _atomic_file(dst.with_suffix(".json"), lambda tmp: tmp.write_text(text))
        else:
            _one_sentence(dst, lambda: _write_folder(dst, {"model.safetensors": out}, {"config.json": cfg}))
    elif target == "torchvision":
        out = formats.from_ours(sd, target, arch)
        _save({k: v.contiguous() for k, v in out.items()}, dst, {"format": "pt"})
    elif target == "hf":
        write_hf(sd, dst, arch=arch, class_names=class_names, data_config=data_config)
    else:
        raise UserError(f"--to {target!r} is not one of {', '.join(TARGETS)}")


def _shape(sd: dict[str, Tensor]) -> tuple[list[int], list[int]]:
    depths = [len({k.split(".")[2] for k in sd if k.startswith(f"stages.{i}.")}) for i in range(4)]
    dims = [int(sd["downsample_layers.0.0.weight"].shape[0])]
    dims += [int(sd[f"downsample_layers.{i}.1.weight"].shape[0]) for i in (1, 2, 3)]
    return depths, dims


def hf_config(
    sd: dict[str, Tensor], arch: str, class_names: list[str] | None, input_size: int = 224
) -> dict[str, Any]:
    """transformers' ConvNextConfig / ConvNextV2Config for these weights, as config.json holds it."""
    v2 = formats.hf_format(sd) == formats.HF_V2
    depths, dims = _shape(sd)
    n = formats.num_classes_of(sd) or 0
    head = "ForImageClassification" if n else "Model"
    cfg: dict[str, Any] = {
        "architectures": [f"ConvNext{'V2' if v2 else ''}{head}"],
        "model_type": "convnextv2" if v2 else "convnext",
        "num_channels": int(sd["downsample_layers.0.0.weight"].shape[1]),
        "patch_size": int(sd["downsample_layers.0.0.weight"].shape[-1]),
        "num_stages": 4,
        "depths": depths,
        "hidden_sizes": dims,
        "hidden_act": "gelu",
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-6,  # the official final norm's (transformers' default 1e-12 differs slightly)
        "drop_path_rate": 0.0,
        "image_size": input_size,
        "torch_dtype": str(next(iter(sd.values())).dtype).removeprefix("torch."),
    }
    if not v2:
        cfg["layer_scale_init_value"] = 1e-6 if any(k.endswith(".gamma") for k in sd) else 0.0
    if n:
        from .presets import label_names

        names = label_names(class_names, n) or [f"LABEL_{i}" for i in range(n)]
        cfg["id2label"] = {str(i): name for i, name in enumerate(names)}
        cfg["label2id"] = {name: i for i, name in enumerate(names)}
    return cfg


def timm_config(
    sd: dict[str, Tensor], arch: str, class_names: list[str] | None, data_config: dict[str, Any] | None
) -> dict[str, Any]:
    """timm's hub ``config.json`` for these weights: what ``timm.create_model("local-dir:FOLDER")`` (or
    ``hf-hub:``) reads to build the architecture with its classes, label names and eval preprocessing."""
    from .presets import label_names

    pre = Preprocessing.from_timm(data_config or {})
    n = formats.num_classes_of(sd) or 0
    names = label_names(class_names, n) if n else None
    pretrained_cfg = {
        **{k: list(v) if isinstance(v, tuple) else v for k, v in pre.to_timm().items()},
        "num_classes": n,
        "first_conv": "stem.0",
        "classifier": "head.fc",
    }
    depths, dims = _shape(sd)
    cfg: dict[str, Any] = {
        "architecture": arch,
        "model_args": {"depths": depths, "dims": dims},  # a resized model (the quickstart's) builds too
        "num_classes": n,
        "num_features": int(sd["downsample_layers.3.1.weight"].shape[0]),
        "global_pool": "avg",
        "pretrained_cfg": pretrained_cfg,
    }
    if names:
        cfg["label_names"] = names
    return cfg


def hf_preprocessor(data_config: dict[str, Any] | None) -> dict[str, Any] | None:
    """ConvNextImageProcessor settings giving the same eval transform, or None when its rule (crop below
    384, squash from 384) cannot express these settings."""
    pre = Preprocessing.from_timm(data_config or {})
    size = pre.img_size
    squash = pre.crop_mode == "squash"
    if squash != (size >= 384) or (squash and pre.crop_pct != 1.0):
        return None
    resample = {"bicubic": 3, "bilinear": 2, "nearest": 0}.get(pre.interpolation)
    if resample is None:
        return None
    return {
        "image_processor_type": "ConvNextImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": size},
        "crop_pct": pre.crop_pct,
        "resample": resample,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(pre.mean),
        "image_std": list(pre.std),
    }


def write_hf(
    sd: dict[str, Tensor],
    dst: Path,
    *,
    arch: str,
    class_names: list[str] | None,
    data_config: dict[str, Any] | None,
) -> None:
    """A Hugging Face model folder, written beside ``dst`` and renamed into place."""
    out = formats.from_ours(sd, formats.hf_format(sd), arch)
    size = int(data_config["input_size"][-1]) if data_config else 224
    _one_sentence(dst, lambda: _write_hf(out, sd, dst, arch, class_names, data_config, size))


def _one_sentence(dst: Path, write: Any) -> None:
    """Run ``write``; a write the disk refused is one sentence (:func:`_write_failed`)."""
    try:
        write()
    except Exception as e:
        failed = _write_failed(e, dst)
        if failed is None:
            raise
        raise failed from None


def _write_hf(
    out: dict[str, Tensor],
    sd: dict[str, Tensor],
    dst: Path,
    arch: str,
    class_names: list[str] | None,
    data_config: dict[str, Any] | None,
    size: int,
) -> None:
    docs = {"config.json": hf_config(sd, arch, class_names, size)}
    pre = hf_preprocessor(data_config)
    if pre is not None:
        docs["preprocessor_config.json"] = pre
    _write_folder(dst, {"model.safetensors": out}, docs)


def _write_folder(dst: Path, tensors: dict[str, dict[str, Tensor]], docs: dict[str, Any]) -> None:
    """A folder of safetensors files and JSON documents, written beside ``dst`` and renamed into place (an
    existing ``dst`` is replaced only once the new one is complete)."""
    from safetensors.torch import save_file

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        for name, sd in tensors.items():
            save_file({k: v.clone() for k, v in sd.items()}, str(tmp / name), {"format": "pt"})
        for name, doc in docs.items():
            (tmp / name).write_text(json.dumps(doc, indent=2) + "\n")
        os.chmod(tmp, 0o777 & ~_umask())
        if dst.exists():
            old = dst.with_name(f".{dst.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dst, old)
            os.replace(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
