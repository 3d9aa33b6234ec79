"""Every ecosystem's ConvNeXt parameter names, translated to ours (the official facebookresearch names)
and back: format detection, ``to_ours`` and its inverse ``from_ours``, and what the shapes say (arch,
classes). Unwrapping containers and checking values is ``containers.py``.

Each mapping below was read off the real modules (timm 1.0 ``ConvNeXt``, torchvision ``convnext_*``,
transformers ``ConvNextForImageClassification`` / ``ConvNextV2ForImageClassification`` /
``DINOv3ConvNextModel``) and is checked by tests/test_equivalence.py, tests/test_convert.py and
tests/test_variants.py, which compare logits (or features) with the peer library. No
library ships this translation (each only imports the official names into its own), hence the tables.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..errors import UserError

if TYPE_CHECKING:
    from ..models.base import Family

StateDict = dict[str, Tensor]

OFFICIAL, TIMM, TORCHVISION, HF, HF_V2, FCMAE, DINOV3 = (
    "official",
    "timm",
    "torchvision",
    "transformers",
    "transformers-v2",
    "fcmae",
    "transformers-dinov3",
)
# transformers' DINOv3ConvNextModel (``model.stages.{i}.layers.{j}``; ``stages...`` alone in its Backbone,
# whose shared ``model.`` prefix strip_prefixes drops)
_DINOV3_KEY = re.compile(r"^(model\.)?stages\.\d+\.(downsample_layers|layers)\.")


def detect_format(sd: StateDict) -> str:
    """Which ecosystem named these keys; one sentence when none did."""
    keys = sd.keys()
    if any(k.startswith(("decode_head.", "auxiliary_head.")) for k in keys):  # weights/upernet.py reads these
        raise UserError(
            "these weights are a UperNet segmentation model (decode_head.*): create it as "
            "upernet_<backbone>, e.g. upernet_convnext_tiny"
        )
    if any(_DINOV3_KEY.match(k) for k in keys):
        return DINOV3
    if any(k.startswith("convnextv2.") for k in keys):
        return HF_V2
    if any(k.startswith("convnext.embeddings.") for k in keys):
        return HF
    if "embeddings.patch_embeddings.weight" in keys:  # a bare ConvNextModel / ConvNextV2Model (no head)
        return HF_V2 if any(".grn." in k for k in keys) else HF
    if "features.0.0.weight" in keys:
        return TORCHVISION
    if "stem.0.weight" in keys or any(".blocks." in k and k.startswith("stages.") for k in keys):
        return TIMM
    if any(k.startswith("encoder.") for k in keys) or any(k.endswith(".kernel") for k in keys):
        return FCMAE
    if "downsample_layers.0.0.weight" in keys or "stem.weight" in keys:
        return OFFICIAL
    sample = ", ".join(list(keys)[:3])
    raise UserError(
        f"these weights are not a ConvNeXt from any known source (official, timm, torchvision, "
        f"transformers, DINOv3); first keys: {sample or '(none)'}"
    )


def _timm(sd: StateDict) -> StateDict:
    out: StateDict = {}
    for k, v in sd.items():
        if k.startswith("head.norm."):
            k = "norm." + k[len("head.norm.") :]
        elif k.startswith("head.fc."):
            k = "head." + k[len("head.fc.") :]
        elif k.startswith("head.pre_logits.fc."):  # large_mlp's MLP head; norm_pre (tiny_hnf) keeps its name
            k = k[len("head.") :]
        elif k.startswith("stem."):
            k = "downsample_layers.0." + k[len("stem.") :]
        else:
            k = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", k)
            k = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", k)
            k = (
                k.replace(".conv_dw.", ".dwconv.")
                .replace(".mlp.fc1.", ".pwconv1.")
                .replace(".mlp.fc2.", ".pwconv2.")
            )
            if ".mlp.grn." in k:  # timm GRN: weight/bias (C,) -> official gamma/beta (1, 1, 1, C)
                k = k.replace(".mlp.grn.weight", ".grn.gamma").replace(".mlp.grn.bias", ".grn.beta")
                v = v.reshape(1, 1, 1, -1)
            if (".pwconv1.weight" in k or ".pwconv2.weight" in k) and v.ndim == 4:
                v = v.flatten(1)  # conv_mlp=True (atto..nano): 1x1 conv (out, in, 1, 1) -> linear (out, in)
        out[k] = v
    return out


# torchvision's block is an nn.Sequential:
# 0 dwconv, 1 permute, 2 norm, 3 pwconv1, 4 GELU, 5 pwconv2, 6 permute.
_TV_BLOCK = {"0": "dwconv", "2": "norm", "3": "pwconv1", "5": "pwconv2"}


def _torchvision(sd: StateDict) -> StateDict:
    out: StateDict = {}
    for k, v in sd.items():
        m = re.match(r"^features\.(\d+)\.(\d+)\.(.*)$", k)
        if k.startswith("classifier.0."):
            k = "norm." + k[len("classifier.0.") :]
        elif k.startswith("classifier.2."):
            k = "head." + k[len("classifier.2.") :]
        elif m and m.group(1) in ("0", "2", "4", "6"):  # stem, then downsampling between stages
            k = f"downsample_layers.{int(m.group(1)) // 2}.{m.group(2)}.{m.group(3)}"
        elif m:  # features 1, 3, 5, 7 are the stages
            stage, block, rest = (int(m.group(1)) - 1) // 2, m.group(2), m.group(3)
            if rest == "layer_scale":
                k, v = f"stages.{stage}.{block}.gamma", v.reshape(-1)  # (C, 1, 1) -> (C,)
            else:
                bm = re.match(r"^block\.(\d+)\.(.*)$", rest)
                if bm is None or bm.group(1) not in _TV_BLOCK:
                    raise UserError(f"unexpected torchvision ConvNeXt key {k!r}")
                k = f"stages.{stage}.{block}.{_TV_BLOCK[bm.group(1)]}.{bm.group(2)}"
        out[k] = v
    return out


_HF_LAYER = {"dwconv": "dwconv", "layernorm": "norm", "pwconv1": "pwconv1", "pwconv2": "pwconv2"}


def _transformers(sd: StateDict, prefix: str) -> StateDict:
    out: StateDict = {}
    for k, v in sd.items():
        if k.startswith("classifier."):
            out["head." + k[len("classifier.") :]] = v
            continue
        if not k.startswith(prefix):
            out[k] = v  # unknown: kept, so that loading names it as unexpected
            continue
        k = k[len(prefix) :]
        if k.startswith("embeddings.patch_embeddings."):
            k = "downsample_layers.0.0." + k[len("embeddings.patch_embeddings.") :]
        elif k.startswith("embeddings.layernorm."):
            k = "downsample_layers.0.1." + k[len("embeddings.layernorm.") :]
        elif k.startswith("layernorm."):
            k = "norm." + k[len("layernorm.") :]
        else:
            m = re.match(r"^encoder\.stages\.(\d+)\.downsampling_layer\.(.*)$", k)
            if m:
                k = f"downsample_layers.{m.group(1)}.{m.group(2)}"
            else:
                m = re.match(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.(.*)$", k)
                if m is None:
                    raise UserError(f"unexpected transformers ConvNeXt key {prefix + k!r}")
                head, rest = f"stages.{m.group(1)}.{m.group(2)}", m.group(3)
                if rest == "layer_scale_parameter":
                    k = f"{head}.gamma"
                elif rest.startswith("grn."):  # (1, 1, 1, C) like the official
                    k = f"{head}.grn." + {"weight": "gamma", "bias": "beta"}[rest[4:]]
                else:
                    name, _, param = rest.partition(".")
                    k = f"{head}.{_HF_LAYER.get(name, name)}.{param}"
        out[k] = v
    return out


def _fcmae(sd: StateDict) -> StateDict:
    """FCMAE pre-training checkpoints: the sparse (MinkowskiEngine) encoder, made dense.

    Drops the decoder, mask token and projection; ``*.kernel`` of a sparse conv is (k*k, in, out) for a
    full conv and (k*k, C) for a depthwise one, stored with the spatial axes swapped relative to torch;
    MinkowskiLayerNorm/Linear wrap ``ln``/``linear``; GRN and biases carry an extra leading axis.
    """
    out: StateDict = {}
    for k, v in sd.items():
        if not k.startswith("encoder.") and any(
            k.startswith(p) for p in ("decoder", "mask_token", "proj", "pred")
        ):
            continue
        k = k.removeprefix("encoder.")
        if k.endswith(".kernel"):
            k = k[: -len(".kernel")] + ".weight"
            ks = math.isqrt(v.shape[0])
            if v.ndim == 3:
                _, cin, cout = v.shape
                v = v.permute(2, 1, 0).reshape(cout, cin, ks, ks).transpose(3, 2)
            else:
                v = v.permute(1, 0).reshape(v.shape[1], 1, ks, ks).transpose(3, 2)
        k = k.replace(".ln.", ".").replace(".linear.", ".")
        if ".grn." in k:
            v = v.reshape(1, 1, 1, -1)
        elif k.endswith(".bias") and v.ndim != 1:
            v = v.reshape(-1)
        out[k] = v.contiguous()
    return out


_DINOV3_LAYER = {"depthwise_conv": "dwconv", "layer_norm": "norm", "pointwise_conv1": "pwconv1"}
_DINOV3_LAYER["pointwise_conv2"] = "pwconv2"


def _dinov3(sd: StateDict) -> StateDict:
    """transformers' DINOv3 ConvNeXt: the official network under other names, and no classifier. Its final
    ``layer_norm`` is our head norm (its pooled output is LayerNorm(mean over the map), as ours with
    ``num_classes=0``), so the weights load as a backbone: a pooled-feature model, or ``features_only``."""
    out: StateDict = {}
    for k, v in sd.items():
        k = k.removeprefix("model.")
        if k.startswith("layer_norm."):
            k = "norm." + k[len("layer_norm.") :]
        elif m := re.match(r"^stages\.(\d+)\.downsample_layers\.(\d+)\.(.*)$", k):
            k = f"downsample_layers.{m[1]}.{m[2]}.{m[3]}"
        elif m := re.match(r"^stages\.(\d+)\.layers\.(\d+)\.(\w+)(.*)$", k):
            k = f"stages.{m[1]}.{m[2]}.{_DINOV3_LAYER.get(m[3], m[3])}{m[4]}"
        out[k] = v
    return out


def to_ours(sd: StateDict, fmt: str) -> StateDict:
    """``sd`` (in format ``fmt``) renamed and reshaped to our parameter names."""
    if fmt == OFFICIAL:
        return dict(sd)
    if fmt == TIMM:
        return _timm(sd)
    if fmt == TORCHVISION:
        return _torchvision(sd)
    if fmt in (HF, HF_V2):
        prefix = "convnextv2." if fmt == HF_V2 else "convnext."
        return _transformers(sd, prefix if any(k.startswith(prefix) for k in sd) else "")
    if fmt == FCMAE:
        return _fcmae(sd)
    if fmt == DINOV3:
        return _dinov3(sd)
    raise ValueError(f"unknown format {fmt!r}")


# ------------------------------------------------------------------------------------------ from ours
TARGETS = (OFFICIAL, TIMM, TORCHVISION, HF)  # what from_ours writes (HF: V1 or V2 by the weights)
TORCHVISION_ARCHS = ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large")
# timm builds these with conv_mlp=True (1x1 conv MLPs): the light sizes, V1 or V2, any stem or norm; tiny_hnf
_TIMM_CONV_MLP = ("zepto", "atto", "femto", "pico", "nano")


def _timm_conv_mlp(arch: str | None) -> bool:
    base = (arch or "").removeprefix("convnextv2_").removeprefix("convnext_")
    return base.partition("_")[0] in _TIMM_CONV_MLP or base == "tiny_hnf"


_TIMM_RULES = [  # ours -> timm, first match wins (the inverse of _timm)
    (r"^downsample_layers\.0\.(\d)\.", r"stem.\1."),
    (r"^downsample_layers\.(\d)\.(\d)\.", r"stages.\1.downsample.\2."),
    (r"^stages\.(\d)\.(\d+)\.dwconv\.", r"stages.\1.blocks.\2.conv_dw."),
    (r"^stages\.(\d)\.(\d+)\.pwconv1\.", r"stages.\1.blocks.\2.mlp.fc1."),
    (r"^stages\.(\d)\.(\d+)\.pwconv2\.", r"stages.\1.blocks.\2.mlp.fc2."),
    (r"^stages\.(\d)\.(\d+)\.grn\.gamma$", r"stages.\1.blocks.\2.mlp.grn.weight"),
    (r"^stages\.(\d)\.(\d+)\.grn\.beta$", r"stages.\1.blocks.\2.mlp.grn.bias"),
    (r"^stages\.(\d)\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"^norm\.", r"head.norm."),
    (r"^pre_logits\.", r"head.pre_logits."),
    (r"^head\.", r"head.fc."),
]


def family_of(sd: StateDict) -> Family:
    """ "v1", "v2" or "isotropic", read off our names (the isotropic patch stem, GRN): for weights without
    a model. With a model, ask ``model.family``; with an architecture's name, ``family_of_name``."""
    if "stem.weight" in sd:
        return "isotropic"
    return "v2" if any(".grn." in k for k in sd) else "v1"


def _rename(k: str, rules: list[tuple[str, str]]) -> str:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, k)
        if n:
            return new
    return k


def _to_timm(sd: StateDict, conv_mlp: bool) -> StateDict:
    out: StateDict = {}
    for k, v in sd.items():
        new = _rename(k, _TIMM_RULES)
        if new.endswith((".mlp.grn.weight", ".mlp.grn.bias")):
            v = v.reshape(-1)  # official (1, 1, 1, C) -> timm (C,)
        elif conv_mlp and re.search(r"\.mlp\.fc[12]\.weight$", new):
            v = v[:, :, None, None]  # linear (out, in) -> 1x1 conv (out, in, 1, 1)
        out[new] = v
    return out


def _tv_key(k: str) -> str:
    if m := re.match(r"^downsample_layers\.(\d)\.(\d)\.(.*)$", k):
        return f"features.{2 * int(m[1])}.{m[2]}.{m[3]}"
    if m := re.match(r"^stages\.(\d)\.(\d+)\.(\w+)\.?(.*)$", k):
        block = {v: f"block.{i}" for i, v in _TV_BLOCK.items()}
        name = "layer_scale" if m[3] == "gamma" else f"{block[m[3]]}.{m[4]}"
        return f"features.{2 * int(m[1]) + 1}.{m[2]}.{name}"
    return re.sub(r"^norm\.", "classifier.0.", re.sub(r"^head\.", "classifier.2.", k))


def _to_torchvision(sd: StateDict) -> StateDict:
    return {_tv_key(k): v.reshape(-1, 1, 1) if k.endswith(".gamma") else v for k, v in sd.items()}


def _to_transformers(sd: StateDict, prefix: str) -> StateDict:
    layer = {v: k for k, v in _HF_LAYER.items()}
    out: StateDict = {}
    for k, v in sd.items():
        if k.startswith("head."):
            out["classifier." + k[len("head.") :]] = v
            continue
        if k.startswith("norm."):
            k = "layernorm." + k[len("norm.") :]
        elif m := re.match(r"^downsample_layers\.0\.([01])\.(.*)$", k):
            k = f"embeddings.{('patch_embeddings', 'layernorm')[int(m[1])]}.{m[2]}"
        elif m := re.match(r"^downsample_layers\.(\d)\.(.*)$", k):
            k = f"encoder.stages.{m[1]}.downsampling_layer.{m[2]}"
        elif m := re.match(r"^stages\.(\d)\.(\d+)\.(.*)$", k):
            head, rest = f"encoder.stages.{m[1]}.layers.{m[2]}", m[3]
            if rest == "gamma":
                k = f"{head}.layer_scale_parameter"
            elif rest.startswith("grn."):
                k = f"{head}.grn." + {"gamma": "weight", "beta": "bias"}[rest[4:]]
            else:
                name, _, param = rest.partition(".")
                k = f"{head}.{layer.get(name, name)}.{param}"
        out[prefix + k] = v
    return out


def from_ours(sd: StateDict, fmt: str, arch: str | None = None) -> StateDict:
    """Our state dict in ``fmt``'s names and shapes (the inverse of ``to_ours``): official, timm,
    torchvision, transformers (V1 or V2 by the weights). One sentence when ``fmt`` cannot hold the model."""
    family = family_of(sd)
    arch = arch or infer_arch(sd)
    what = arch or f"this {family} ConvNeXt"
    if fmt == OFFICIAL:
        return dict(sd)
    if family == "isotropic":
        raise UserError(
            f"{what} is an isotropic ConvNeXt, which only the official code has; use --to official"
        )
    if fmt == TIMM:
        return _to_timm(sd, conv_mlp=_timm_conv_mlp(arch))
    timm_only = {k: v for k, v in structure_options(sd).items() if v != _PAPER_STRUCTURE[k]}
    if arch and get_options(arch).get("norm_eps", 1e-6) != 1e-6:
        timm_only["norm_eps"] = get_options(arch)["norm_eps"]
    if timm_only:
        what_opts = ", ".join(f"{k}={v!r}" for k, v in timm_only.items())
        raise UserError(f"{what} has timm's options ({what_opts}), which only timm can hold; use --to timm")
    if fmt == TORCHVISION:
        if family == "v2":
            raise UserError(f"torchvision has no ConvNeXt V2, so it cannot hold {what}; use --to timm or hf")
        if arch not in TORCHVISION_ARCHS:
            raise UserError(
                f"torchvision ships only {', '.join(TORCHVISION_ARCHS)}, so it cannot hold {what}; "
                "use --to timm or hf"
            )
        if "head.weight" not in sd:
            raise UserError(f"torchvision's ConvNeXt always has a classifier and {what} has none")
        return _to_torchvision(sd)
    if fmt in (HF, HF_V2):  # ConvNextV2 for V2 weights, ConvNext for V1, whichever was asked
        return _to_transformers(sd, "convnextv2." if family == "v2" else "convnext.")
    raise UserError(f"cannot write {fmt!r} weights; targets: ours, {', '.join(TARGETS)}")


def hf_format(sd: StateDict) -> str:
    """transformers' model for our weights: ConvNextV2 for V2, ConvNext for V1."""
    return HF_V2 if family_of(sd) == "v2" else HF


def num_classes_of(sd: StateDict) -> int | None:
    """The classifier's class count, or None when the weights carry no classifier (a backbone)."""
    w = sd.get("head.weight")
    return int(w.shape[0]) if w is not None else None


_PAPER_STRUCTURE: dict[str, Any] = {
    "stem": "patch",
    "norm": "layernorm",
    "head_norm_first": False,
    "head_hidden_size": None,
}


def get_options(arch: str) -> dict[str, Any]:
    """The constructor options of the named architecture (empty for an unknown name)."""
    from ..models.factory import VARIANTS

    v = VARIANTS.get(arch.partition(".")[0])
    return dict(v.kwargs) if v is not None else {}


def _stem_width(sd: StateDict) -> int | None:
    """The stem's output width: its last conv's (the first of the two in timm's overlapping stems is
    narrower in the tiered ones)."""
    convs = [
        (int(k.split(".")[2]), v)
        for k, v in sd.items()
        if re.match(r"^downsample_layers\.0\.\d+\.weight$", k) and v.ndim == 4
    ]
    return int(max(convs, key=lambda c: c[0])[1].shape[0]) if convs else None


def structure_options(sd: StateDict) -> dict[str, Any]:
    """What the keys and shapes say about timm's options (``ConvNeXt``'s ``stem``, ``norm``,
    ``head_norm_first``, ``head_hidden_size``); the paper's values where they say nothing. A norm without
    bias is timm's ``simplenorm`` (``convnext_zepto_rms``'s; ``rmsnorm`` has the same parameters, so only
    the architecture's name can tell ``convnext_atto_rms``). ``norm_eps`` (``xxlarge``) has no trace."""
    opts = dict(_PAPER_STRUCTURE)
    w = sd.get("downsample_layers.0.0.weight")
    if w is not None and w.ndim == 4 and w.shape[-1] == 3:
        if "downsample_layers.0.3.weight" in sd:
            opts["stem"] = "overlap_act"
        else:
            opts["stem"] = "overlap_tiered" if int(w.shape[0]) != _stem_width(sd) else "overlap"
    if "downsample_layers.1.0.weight" in sd and "downsample_layers.1.0.bias" not in sd:
        opts["norm"] = "simplenorm"
    opts["head_norm_first"] = "norm_pre.weight" in sd
    if "pre_logits.fc.weight" in sd:
        opts["head_hidden_size"] = int(sd["pre_logits.fc.weight"].shape[0])
    return opts


def _same_structure(kwargs: dict[str, Any], opts: dict[str, Any]) -> bool:
    for key, value in opts.items():
        mine = kwargs.get(key, _PAPER_STRUCTURE[key])
        if key == "norm":  # only the bias shows: LayerNorm has one, rms and simple norms none
            if (mine == "layernorm") != (value == "layernorm"):
                return False
        elif mine != value:
            return False
    return True


def infer_arch(sd: StateDict) -> str | None:
    """Which of our architectures has exactly these depths and widths (our names); None if none does."""
    from ..models.factory import VARIANTS

    family = family_of(sd)
    if family == "isotropic":
        depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        dim = int(sd["stem.weight"].shape[0])
        for name, v in VARIANTS.items():
            if v.family == "isotropic" and v.kwargs == {"depth": depth, "dim": dim}:
                return name
        return None
    if "downsample_layers.0.0.weight" not in sd:
        return None
    dims = [_stem_width(sd)]
    dims += [
        int(sd[f"downsample_layers.{i}.1.weight"].shape[0])
        for i in (1, 2, 3)
        if f"downsample_layers.{i}.1.weight" in sd
    ]
    depths = [len({k.split(".")[2] for k in sd if k.startswith(f"stages.{i}.")}) for i in range(4)]
    structure = structure_options(sd)
    for name, v in VARIANTS.items():
        if (
            v.family == family
            and tuple(v.kwargs["depths"]) == tuple(depths)
            and tuple(v.kwargs["dims"]) == tuple(dims)
            and _same_structure(v.kwargs, structure)
        ):
            return name
    return None


def shape_options(sd: StateDict) -> dict[str, Any]:
    """The depths and widths of these weights (our names) as constructor options (``depths``/``dims``, or
    ``depth``/``dim`` for the isotropic family): what rebuilds a model whose shapes no named variant has
    (a run trained with ``model.options``), with timm's options they show (:func:`structure_options`) where
    not the paper's; empty when the weights do not show them all."""
    if family_of(sd) == "isotropic":
        depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        return {"depth": depth, "dim": int(sd["stem.weight"].shape[0])} if depth else {}
    names = [f"downsample_layers.{i}.1.weight" for i in (1, 2, 3)]
    if "downsample_layers.0.0.weight" not in sd or not all(n in sd for n in names):
        return {}
    depths = [len({k.split(".")[2] for k in sd if k.startswith(f"stages.{i}.")}) for i in range(4)]
    if not all(depths):
        return {}
    timm = {k: v for k, v in structure_options(sd).items() if v != _PAPER_STRUCTURE[k]}
    return {"depths": depths, "dims": [_stem_width(sd), *(int(sd[n].shape[0]) for n in names)], **timm}


def describe_shape(sd: StateDict) -> str:
    """Depths and widths in words, for an error message about weights that fit no architecture."""
    if family_of(sd) == "isotropic":
        depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        return f"isotropic, depth {depth}, dim {sd['stem.weight'].shape[0]}"
    depths = [len({k.split(".")[2] for k in sd if k.startswith(f"stages.{i}.")}) for i in range(4)]
    w = _stem_width(sd)
    return f"depths {depths}, stem width {w if w is not None else '?'}"


__all__ = [
    "detect_format",
    "structure_options",
    "family_of",
    "from_ours",
    "describe_shape",
    "infer_arch",
    "num_classes_of",
    "shape_options",
    "to_ours",
]
