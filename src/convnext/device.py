"""Device and mixed-precision choices, resolved the same way by every verb (train, evaluate, predict, ...)."""

from __future__ import annotations

import contextlib

import torch

from .errors import UserError
from .messages import note
from .models.cpu import cpu_has_native_bf16

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto", local_rank: int = 0, *, what: str = "--device") -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` (this process's local GPU) or ``cuda:N``.

    ``what`` names the flag or config key in the error sentence.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"{what} {name}: CUDA is not available on this machine; use cpu")
        if name == "cuda":
            return torch.device("cuda", local_rank)
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"{what} {name!r} is not a device (auto, cpu, cuda, cuda:N)") from None


def amp_dtype(name: str | None, device: torch.device, *, what: str = "--amp") -> torch.dtype | None:
    """The autocast dtype for ``none``/``bf16``/``fp16`` (None or "none": full precision).

    bf16 on a CPU without native bf16 instructions is allowed (it is correct) but noted in one line, since
    it is slower than fp32 there."""
    key = name or "none"
    if key not in AMP_DTYPES:
        raise UserError(f"{what} {name!r} must be one of {', '.join(AMP_DTYPES)}")
    if key == "fp16" and device.type != "cuda":
        raise UserError(f"{what} fp16 needs a CUDA device; use bf16 on CPU")
    if key == "bf16" and device.type == "cpu" and (msg := bf16_cpu_note(what)):
        note(msg)
    return AMP_DTYPES[key]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op context for full precision."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------
# What the CPU can do natively: bf16 autocast, OpenVINO's precision choice and int8 speed all depend on it.


def bf16_cpu_note(what: str = "--amp", flags: frozenset[str] | None = None) -> str | None:
    """The sentence to show before bf16 runs on this CPU, or None when bf16 is native here."""
    if cpu_has_native_bf16(flags):
        return None
    return (
        f"this CPU has no native bf16 (no AVX512-BF16 or AMX): {what} bf16 is emulated and slower than fp32"
    )
