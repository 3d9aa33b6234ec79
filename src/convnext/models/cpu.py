"""What this CPU computes natively (bf16 and int8 dot products, AVX2 / AVX-512 / AMX), read from Linux's
/proc/cpuinfo and capped as oneDNN is (ONEDNN_MAX_CPU_ISA).

Here, in models/, because the blocks' fast paths choose by it (bf16 chunks only where bf16 GEMMs are native)
and models/ imports nothing of the package but itself; the verbs' reports (export, benchmark, the --amp
note) read it too.
"""

from __future__ import annotations

import contextlib
import functools
import os

# /proc/cpuinfo flag (x86) or feature (aarch64) -> what we call it in reports.
_ISA_FLAGS = {
    "AVX2": ("avx2",),
    "AVX-512": ("avx512f",),
    "VNNI": ("avx512_vnni", "avx_vnni", "asimddp"),  # int8 dot products (Cascade Lake+, Zen 4, Arm dotprod)
    "BF16": ("avx512_bf16", "bf16"),  # bf16 dot products: AVX512-BF16 (Cooper Lake+, Zen 4), Arm BF16
    "AMX": ("amx_tile", "amx_bf16", "amx_int8"),  # tile matmul units (Sapphire Rapids+)
}


# oneDNN's ISA levels, lowest first, with the flags each adds. ONEDNN_MAX_CPU_ISA=<level> caps what oneDNN
# (PyTorch's convolutions, OpenVINO's CPU plugin) may use; we report the capped CPU, so that an AVX2 host
# can be emulated (with MKL_ENABLE_INSTRUCTIONS=AVX2 and ATEN_CPU_CAPABILITY=avx2 for the rest of torch).
_ONEDNN_LEVELS = [
    ("SSE41", ()),
    ("AVX", ()),
    ("AVX2", ("avx2",)),
    ("AVX2_VNNI", ("avx_vnni",)),
    ("AVX2_VNNI_2", ()),
    ("AVX512_CORE", ("avx512f",)),
    ("AVX512_CORE_VNNI", ("avx512_vnni",)),
    ("AVX512_CORE_BF16", ("avx512_bf16",)),
    ("AVX512_CORE_FP16", ()),
    ("AVX10_1_512", ()),
    ("AVX512_CORE_AMX", ("amx_tile", "amx_bf16", "amx_int8")),
    ("AVX10_1_512_AMX", ()),
]
_CAPPABLE = {f for _, flags in _ONEDNN_LEVELS for f in flags}


def _cap_flags(flags: frozenset[str], cap: str | None) -> frozenset[str]:
    names = [n for n, _ in _ONEDNN_LEVELS]
    if not cap or cap.upper() not in names:  # unset, ALL or a level we do not know: no cap
        return flags
    allowed = {f for n, fl in _ONEDNN_LEVELS[: names.index(cap.upper()) + 1] for f in fl}
    return frozenset(f for f in flags if f not in _CAPPABLE or f in allowed)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo is missing), capped by
    ONEDNN_MAX_CPU_ISA when it is set."""
    flags: frozenset[str] = frozenset()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):
                    flags = frozenset(line.split(":", 1)[1].split())
                    break
    return _cap_flags(flags, os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA"))


def cpu_features(flags: frozenset[str] | None = None) -> dict[str, bool]:
    """AVX2 / AVX-512 / VNNI / BF16 / AMX: present or not (``flags`` default: this machine's)."""
    flags = cpu_flags() if flags is None else flags
    return {name: any(f in flags for f in names) for name, names in _ISA_FLAGS.items()}


def cpu_features_line(flags: frozenset[str] | None = None) -> str:
    """One line for reports: ``AVX2 yes, AVX-512 yes, VNNI yes, BF16 yes, AMX no``."""
    return ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu_features(flags).items())


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """bf16 dot-product instructions (AVX512-BF16, AMX or Arm BF16). Without them bf16 matmuls are
    emulated by converting to fp32 and run slower than fp32; with them, faster than fp32 (BENCHMARKS.md)."""
    f = cpu_features(flags)
    return f["BF16"] or f["AMX"]


def cpu_has_int8_dot(flags: frozenset[str] | None = None) -> bool:
    """int8 dot-product instructions (VNNI or AMX): what makes an int8 model several times faster."""
    f = cpu_features(flags)
    return f["VNNI"] or f["AMX"]
