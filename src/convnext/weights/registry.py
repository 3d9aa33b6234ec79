"""The officially released ConvNeXt weights, by tag: where to fetch them and how they were evaluated.

Tags follow timm's naming (``<arch>.<pretrained tag>``) so that a name people already know finds the same
weights here. URLs and top-1 figures are those of the official READMEs (facebookresearch/ConvNeXt and
facebookresearch/ConvNeXt-V2); input size, crop_pct and crop mode follow timm's ``default_cfgs`` for the
same files, which reproduce the papers' evaluation (224: resize to 224/crop_pct then center crop;
384 and up: resize the whole image to the square, no crop, "squash"). torchvision's own releases carry
torchvision's presets (its ``weights.transforms()``: e.g. resize 236, crop 224, bilinear for tiny).

Each entry carries its eval transform (``entry.transforms()``, torchvision's ``WeightsEnum`` pattern), so
that predict, evaluate and ``convnext.create_transform`` cannot drift from the weights' own preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlparse

from ..data.preprocessing import TIMM_KEYS, Preprocessing

_FB = "https://dl.fbaipublicfiles.com/convnext"
_FB2 = "https://dl.fbaipublicfiles.com/convnext/convnextv2"
_TIMM = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-rsb-weights"
_HUB = "hf-hub:timm"  # timm's Hub repos (``hf-hub:timm/<arch>.<tag>``), in timm's layout
# CLIP's normalisation (OpenAI's, which LAION's OpenCLIP towers kept): timm's OPENAI_CLIP_MEAN / _STD
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET12K_CLASSES = (
    11821  # timm's ImageNet-12k: the 22k synsets with enough images (imagenet12k_synsets.txt)
)


@dataclass(frozen=True)
class WeightEntry:
    """One released checkpoint. ``num_classes`` 0 means a backbone without classifier (FCMAE pre-training)."""

    tag: str
    arch: str
    url: str
    # "in1k", "in22k", "in22k->in1k", "in12k", "fcmae-in1k" / "lvd1689m" (self-supervised, no labels), ...
    dataset: str
    num_classes: int
    top1: float | None = None  # ImageNet-1k val top-1 (%) published with the weights, at its input size
    source: str = "facebookresearch/ConvNeXt"
    license: str = "MIT"
    # the eval transform the weights were measured with (the paper's 224 evaluation unless said)
    preprocessing: Preprocessing = Preprocessing()
    note: str = ""  # what a user must know that the fields do not say (a head that is not classes, ...)

    @property
    def input_size(self) -> int:
        """The square side the weights were evaluated at (``preprocessing.img_size``)."""
        return self.preprocessing.img_size

    @property
    def crop_pct(self) -> float:
        return self.preprocessing.crop_pct

    @property
    def crop_mode(self) -> str:
        return self.preprocessing.crop_mode

    @property
    def interpolation(self) -> str:
        return self.preprocessing.interpolation

    @property
    def mean(self) -> tuple[float, ...]:
        return self.preprocessing.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.preprocessing.std

    def as_dict(self) -> dict[str, Any]:
        """The entry as flat plain data (``convnext models --weights --json``): its fields with the eval
        settings spelled out beside them, in the layout that output has always had."""
        p = self.preprocessing
        return {
            "tag": self.tag,
            "arch": self.arch,
            "url": self.url,
            "dataset": self.dataset,
            "num_classes": self.num_classes,
            "input_size": p.img_size,
            "crop_pct": p.crop_pct,
            "crop_mode": p.crop_mode,
            "mean": p.mean,
            "std": p.std,
            "interpolation": p.interpolation,
            "top1": self.top1,
            "source": self.source,
            "license": self.license,
            "note": self.note,
        }

    def data_config(self) -> dict[str, Any]:
        """The eval settings, in timm's ``resolve_data_config`` layout (input_size is (3, H, W))."""
        return self.preprocessing.to_timm()

    def pretrained_cfg(self) -> dict[str, Any]:
        """What ``model.pretrained_cfg`` holds for these weights (timm's keys)."""
        return {
            **self.data_config(),
            "num_classes": self.num_classes,
            "architecture": self.arch,
            "tag": self.tag.partition(".")[2],
            "url": self.url,
            "license": self.license,
            "source": self.source,
        }

    def transforms(self) -> Any:
        """The exact eval transform of these weights: uint8 (3, H, W) tensor in, normalized float out."""
        from ..data.transforms import build_eval_transform

        return build_eval_transform(self.preprocessing.apply())


_ENTRIES: list[WeightEntry] = []


def _add(tag: str, url: str, dataset: str, num_classes: int, top1: float | None, **kw: Any) -> None:
    """One entry; ``kw`` mixes the entry's fields and its eval settings in timm's names (``input_size``)."""
    pre = Preprocessing.from_timm({k: kw.pop(k) for k in TIMM_KEYS if k in kw})
    entry = WeightEntry(
        tag, tag.partition(".")[0], url, dataset, num_classes, top1=top1, preprocessing=pre, **kw
    )
    _ENTRIES.append(entry)


_SQUASH384 = {"input_size": 384, "crop_pct": 1.0, "crop_mode": "squash"}

# ConvNeXt V1, ImageNet-1k trained (EMA weights at 224, as released).
for _s, _top1 in {"tiny": 82.1, "small": 83.1, "base": 83.8, "large": 84.3}.items():
    _add(f"convnext_{_s}.fb_in1k", f"{_FB}/convnext_{_s}_1k_224_ema.pth", "in1k", 1000, _top1)
for _s, _top1 in {"base": 85.1, "large": 85.5}.items():  # not in timm; tag named in the same pattern
    _add(f"convnext_{_s}.fb_in1k_384", f"{_FB}/convnext_{_s}_1k_384.pth", "in1k", 1000, _top1, **_SQUASH384)
# ImageNet-22k pre-trained (21841 classes; top1 is that of the 22k->1k fine-tuned model at 224).
_V1_22K = {
    "tiny": (82.9, 84.1),
    "small": (84.6, 85.8),
    "base": (85.8, 86.8),
    "large": (86.6, 87.5),
    "xlarge": (87.0, 87.8),
}
for _s in _V1_22K:
    _add(f"convnext_{_s}.fb_in22k", f"{_FB}/convnext_{_s}_22k_224.pth", "in22k", 21841, None)
for _s, (_t224, _t384) in _V1_22K.items():
    _ema = "_ema" if _s == "xlarge" else ""  # the README links the EMA files for XL only
    _add(
        f"convnext_{_s}.fb_in22k_ft_in1k",
        f"{_FB}/convnext_{_s}_22k_1k_224{_ema}.pth",
        "in22k->in1k",
        1000,
        _t224,
    )
    _add(
        f"convnext_{_s}.fb_in22k_ft_in1k_384",
        f"{_FB}/convnext_{_s}_22k_1k_384{_ema}.pth",
        "in22k->in1k",
        1000,
        _t384,
        **_SQUASH384,
    )
# Isotropic ConvNeXt, ImageNet-1k.
for _s, _top1 in {"small": 78.7, "base": 82.0, "large": 82.6}.items():
    _add(f"convnext_isotropic_{_s}.fb_in1k", f"{_FB}/convnext_iso_{_s}_1k_224_ema.pth", "in1k", 1000, _top1)
# The light V1 variants were trained by timm (Ross Wightman), not in the paper; no published top-1 here.
for _s, _t, _h, _crop in (
    ("atto", "d2", "01bb0f51", 0.875),
    ("femto", "d1", "d71d5b4c", 0.875),
    ("pico", "d1", "10ad7f0d", 0.875),
    ("nano", "d1h", "7eb4bdea", 0.95),
):
    _add(
        f"convnext_{_s}.{_t}_in1k",
        f"{_TIMM}/convnext_{_s}_{_t}-{_h}.pth",
        "in1k",
        1000,
        None,
        crop_pct=_crop,
        source="huggingface/pytorch-image-models",
        license="Apache-2.0",
    )

# ConvNeXt V2 (weights CC-BY-NC 4.0). FCMAE self-supervised pre-training only: encoder, no head.
_V2 = {"source": "facebookresearch/ConvNeXt-V2", "license": "CC-BY-NC-4.0"}
_V2_1K = {
    "atto": 76.7,
    "femto": 78.5,
    "pico": 80.3,
    "nano": 81.9,
    "tiny": 83.0,
    "base": 84.9,
    "large": 85.8,
    "huge": 86.3,
}
for _s, _top1 in _V2_1K.items():
    _add(
        f"convnextv2_{_s}.fcmae_ft_in1k",
        f"{_FB2}/im1k/convnextv2_{_s}_1k_224_ema.pt",
        "in1k",
        1000,
        _top1,
        **_V2,
    )
for _s, _res, _top1 in (
    ("nano", 224, 82.1),
    ("nano", 384, 83.4),
    ("tiny", 224, 83.9),
    ("tiny", 384, 85.1),
    ("base", 224, 86.8),
    ("base", 384, 87.7),
    ("large", 224, 87.3),
    ("large", 384, 88.2),
    ("huge", 384, 88.7),
    ("huge", 512, 88.9),
):
    _res_kw = {"input_size": _res, "crop_pct": 1.0, "crop_mode": "squash"} if _res > 224 else {}
    _add(
        f"convnextv2_{_s}.fcmae_ft_in22k_in1k" + (f"_{_res}" if _res > 224 else ""),
        f"{_FB2}/im22k/convnextv2_{_s}_22k_{_res}_ema.pt",
        "in22k->in1k",
        1000,
        _top1,
        **_res_kw,
        **_V2,
    )
for _s in _V2_1K:
    _add(
        f"convnextv2_{_s}.fcmae",
        f"{_FB2}/pt_only/convnextv2_{_s}_1k_224_fcmae.pt",
        "fcmae-in1k",
        0,
        None,
        **_V2,
    )

# torchvision's releases (torchvision.models.ConvNeXt_*_Weights.IMAGENET1K_V1), with torchvision's own
# presets: resize the shorter side to resize_size (bilinear), centre crop 224. crop_pct = 224 / resize_size
# gives back exactly that resize (floor(224 / (224 / 236)) == 236). Read off torchvision 0.29's enum.
_TV = "https://download.pytorch.org/models"
for _s, _h, _resize, _top1 in (
    ("tiny", "983f1562", 236, 82.52),
    ("small", "0c510722", 230, 83.616),
    ("base", "6075fbad", 232, 84.062),
    ("large", "ea097f82", 232, 84.414),
):
    _add(
        f"convnext_{_s}.tv_in1k",
        f"{_TV}/convnext_{_s}-{_h}.pth",
        "in1k",
        1000,
        _top1,
        crop_pct=224 / _resize,
        interpolation="bilinear",
        source="pytorch/vision (IMAGENET1K_V1)",
        license="BSD-3-Clause",
    )

# timm's own trainings of its variants (timm's default_cfgs: URL, crop, mean/std), and ImageNet-12k.
_T = {"source": "huggingface/pytorch-image-models", "license": "Apache-2.0"}
_HALF = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
for _tag, _url, _kw in (
    ("convnext_zepto_rms.ra4_e3600_r224_in1k", None, _HALF),
    ("convnext_zepto_rms_ols.ra4_e3600_r224_in1k", None, {**_HALF, "crop_pct": 0.9}),
    ("convnext_atto_ols.a2_in1k", "convnext_atto_ols_a2-78d1c8f3.pth", {}),
    ("convnext_femto_ols.d1_in1k", "convnext_femto_ols_d1-246bf2ed.pth", {}),
    ("convnext_pico_ols.d1_in1k", "convnext_pico_ols_d1-611f0ca7.pth", {"crop_pct": 0.95}),
    ("convnext_nano_ols.d1h_in1k", "convnext_nano_ols_d1h-ae424a9a.pth", {"crop_pct": 0.95}),
    ("convnext_tiny_hnf.a2h_in1k", "convnext_tiny_hnf_a2h-ab7e9df2.pth", {"crop_pct": 0.95}),
    ("convnext_nano.in12k_ft_in1k", None, {"crop_pct": 0.95}),
    ("convnext_nano.r384_in12k_ft_in1k", None, {"input_size": 384, "crop_pct": 1.0}),
    ("convnext_tiny.in12k_ft_in1k", None, {"crop_pct": 0.95}),
    ("convnext_tiny.in12k_ft_in1k_384", None, _SQUASH384),
    ("convnext_small.in12k_ft_in1k", None, {"crop_pct": 0.95}),
    ("convnext_small.in12k_ft_in1k_384", None, _SQUASH384),
):
    _ds = "in12k->in1k" if "in12k" in _tag else "in1k"
    _add(_tag, f"{_TIMM}/{_url}" if _url else f"{_HUB}/{_tag}", _ds, 1000, None, **_kw, **_T)
_12K_NOTE = "ImageNet-12k head: 11821 classes, timm's imagenet12k_synsets.txt (printed as WordNet's words)"
for _tag, _kw in (
    ("convnext_nano.in12k", {"crop_pct": 0.95}),
    ("convnext_nano.r384_in12k", {"input_size": 384, "crop_pct": 1.0}),
    ("convnext_nano.r384_ad_in12k", {"input_size": 384, "crop_pct": 1.0}),
    ("convnext_tiny.in12k", {"crop_pct": 0.95}),
    ("convnext_small.in12k", {"crop_pct": 0.95}),
):
    _add(_tag, f"{_HUB}/{_tag}", "in12k", IMAGENET12K_CLASSES, None, **_kw, **_T, note=_12K_NOTE)

# CLIP image towers trained by LAION with OpenCLIP, fine-tuned by timm (in1k, in12k, in12k then in1k), and
# the towers themselves, whose "classes" are the CLIP embedding (the projection; no class names). CLIP's
# mean/std, not ImageNet's; 256/320/384 px.
_CLIP = {"mean": CLIP_MEAN, "std": CLIP_STD, "crop_pct": 1.0, "source": "LAION (OpenCLIP) via timm"}
_CLIP.update(license="Apache-2.0")
for _tag, _res, _mode in (
    ("convnext_base.clip_laion2b_augreg_ft_in1k", 256, "center"),
    ("convnext_base.clip_laion2b_augreg_ft_in12k_in1k", 256, "center"),
    ("convnext_base.clip_laion2b_augreg_ft_in12k_in1k_384", 384, "squash"),
    ("convnext_base.clip_laiona_augreg_ft_in1k_384", 384, "center"),
    ("convnext_large_mlp.clip_laion2b_augreg_ft_in1k", 256, "center"),
    ("convnext_large_mlp.clip_laion2b_augreg_ft_in1k_384", 384, "squash"),
    ("convnext_large_mlp.clip_laion2b_soup_ft_in12k_in1k_320", 320, "center"),
    ("convnext_large_mlp.clip_laion2b_soup_ft_in12k_in1k_384", 384, "squash"),
    ("convnext_xxlarge.clip_laion2b_soup_ft_in1k", 256, "center"),
):
    _ds = "laion2b->in12k->in1k" if "in12k" in _tag else "laion2b->in1k"
    _ds = _ds.replace("laion2b", "laiona") if "laiona" in _tag else _ds
    _add(_tag, f"{_HUB}/{_tag}", _ds, 1000, None, input_size=_res, crop_mode=_mode, **_CLIP)
for _tag, _res, _mode in (
    ("convnext_base.clip_laion2b_augreg_ft_in12k", 256, "center"),
    ("convnext_large_mlp.clip_laion2b_soup_ft_in12k_320", 320, "center"),
    ("convnext_large_mlp.clip_laion2b_augreg_ft_in12k_384", 384, "squash"),
    ("convnext_large_mlp.clip_laion2b_soup_ft_in12k_384", 384, "squash"),
    ("convnext_xxlarge.clip_laion2b_soup_ft_in12k", 256, "center"),
):
    _add(
        _tag, f"{_HUB}/{_tag}", "laion2b->in12k", IMAGENET12K_CLASSES, None,
        input_size=_res, crop_mode=_mode, note=_12K_NOTE, **_CLIP,
    )  # fmt: skip
for _tag, _dim, _res in (
    ("convnext_base.clip_laion2b", 640, 256),
    ("convnext_base.clip_laion2b_augreg", 640, 256),
    ("convnext_base.clip_laiona", 640, 256),
    ("convnext_base.clip_laiona_320", 640, 320),
    ("convnext_base.clip_laiona_augreg_320", 640, 320),
    ("convnext_large_mlp.clip_laion2b_augreg", 768, 256),
    ("convnext_large_mlp.clip_laion2b_ft_320", 768, 320),
    ("convnext_large_mlp.clip_laion2b_ft_soup_320", 768, 320),
    ("convnext_xxlarge.clip_laion2b_soup", 1024, 256),
    ("convnext_xxlarge.clip_laion2b_rewind", 1024, 256),
):
    _add(
        _tag, f"{_HUB}/{_tag}", "laiona" if "laiona" in _tag else "laion2b", _dim, None, input_size=_res,
        note=f"CLIP image tower: the {_dim} outputs are the CLIP image embedding, not classes", **_CLIP,
    )  # fmt: skip

# Self-supervised backbones on LVD-1689M, no classifier (num_classes 0: pooled features, or features_only):
# DINOv3's ConvNeXts (Meta's DINOv3 licence; transformers' facebook/dinov3-convnext-*-pretrain-lvd1689m
# hold the same weights in its DINOv3ConvNextModel layout, which loads too) and EUPE's.
for _s in ("tiny", "small", "base", "large"):
    _add(
        f"convnext_{_s}.dinov3_lvd1689m", f"{_HUB}/convnext_{_s}.dinov3_lvd1689m", "lvd1689m", 0, None,
        crop_pct=1.0, source="facebookresearch/dinov3", license="DINOv3 License",
        note="DINOv3 backbone without classifier: features (pooled, or features_only); licence terms apply "
        "to outputs (https://ai.meta.com/resources/models-and-libraries/dinov3-license/)",
    )  # fmt: skip
for _s in ("tiny", "small", "base"):
    _add(
        f"convnext_{_s}.eupe_lvd1689m", f"{_HUB}/convnext_{_s}.eupe_lvd1689m", "lvd1689m", 0, None,
        input_size=256, crop_pct=1.0, source="facebookresearch (EUPE) via timm",
        license="FAIR Noncommercial Research License",
        note="EUPE backbone without classifier: features (pooled, or features_only)",
    )  # fmt: skip

REGISTRY: dict[str, WeightEntry] = {e.tag: e for e in _ENTRIES}

# The weights ``pretrained=True`` picks: the paper's ImageNet-1k model where there is one (what people
# reproduce), else the 22k->1k fine-tuned one at 224.
_DEFAULT_ORDER = ("fb_in1k", "fcmae_ft_in1k", "fb_in22k_ft_in1k", "d2_in1k", "d1_in1k", "d1h_in1k", "a2_in1k")


def register(entry: WeightEntry) -> None:
    """Add (or replace) an entry: a lab's own released weights, or a test server's."""
    REGISTRY[entry.tag] = entry


def find_tag(src: str) -> WeightEntry | None:
    """The entry called ``src``, or None when ``src`` is not a tag (a path or a URL)."""
    return REGISTRY.get(src)


def find_file(src: str) -> WeightEntry | None:
    """The entry whose URL is ``src``, or whose file name ``src``'s is (a release downloaded by hand keeps
    its name, e.g. ``convnext_tiny_22k_1k_384.pth``): its eval settings apply. None when none matches."""
    name = PurePosixPath(urlparse(src).path if "://" in src else src.replace("\\", "/")).name
    for e in REGISTRY.values():
        if src == e.url or (name and name == PurePosixPath(urlparse(e.url).path).name):
            return e
    return None


def torchvision_entry(arch: str) -> WeightEntry | None:
    """torchvision's release of ``arch`` (its preset applies to any checkpoint in torchvision's layout)."""
    return REGISTRY.get(f"{arch}.tv_in1k")


def list_tags(arch: str | None = None) -> list[str]:
    """Every tag, or those of one architecture."""
    return [t for t, e in REGISTRY.items() if arch is None or e.arch == arch]


def default_tag(arch: str) -> str:
    """The tag ``create_model(arch, pretrained=True)`` loads; one sentence when the architecture has none."""
    from ..errors import UserError

    for suffix in _DEFAULT_ORDER:
        if f"{arch}.{suffix}" in REGISTRY:
            return f"{arch}.{suffix}"
    tags = list_tags(arch)
    if tags:
        return tags[0]
    raise UserError(
        f"no released weights for {arch!r} (e.g. convnextv2_small was never released); "
        "pass pretrained=<file or URL> or train it"
    )
