"""timm's ConvNeXt variants and the CLIP / LAION, ImageNet-12k and DINOv3 releases, each against its source.

Every parameter is randomised (layer scale and norm weights included: at their init a dropped op or a
wrong norm hides in the rounding), then the peer's model is converted into ours and the logits (or, for the
DINOv3 backbone, the features) must agree. The variants with 27+ blocks or wide stages are tested in a
shrunk configuration with the same structure (their stem, norm, eps and head; fewer and narrower blocks,
through the model options both libraries take), so the file runs in seconds; their full-size layouts are
checked on the meta device (shapes and names only, no memory).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import convnext
from convnext.cli.main import main
from convnext.errors import UserError
from convnext.weights import formats, registry
from convnext.weights.load import load_checkpoint, prepare

timm = pytest.importorskip("timm")
TOL = 1e-4
X = (1, 3, 64, 96)  # non-square: a transposed kernel would show

NEW = [
    "convnext_zepto_rms",
    "convnext_zepto_rms_ols",
    "convnext_atto_ols",
    "convnext_atto_rms",
    "convnext_femto_ols",
    "convnext_pico_ols",
    "convnext_nano_ols",
    "convnext_tiny_hnf",
    "convnext_large_mlp",
    "convnext_xxlarge",
    "convnextv2_small",
]
_SMALL = {"depths": (1, 1, 3, 1), "dims": (24, 48, 72, 96)}
SHRUNK = {  # same structure, fewer and narrower blocks (a hidden size unlike the width, for large_mlp)
    "convnext_nano_ols": _SMALL,
    "convnext_tiny_hnf": _SMALL,
    "convnext_large_mlp": {**_SMALL, "head_hidden_size": 80},
    "convnext_xxlarge": _SMALL,
    "convnextv2_small": _SMALL,
}


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for name, p in module.named_parameters():
        fan_in = math.prod(p.shape[1:])
        if p.ndim >= 2 and p.shape[0] > 1 and fan_in > 1:
            bound = math.sqrt(3 / fan_in)
            p.uniform_(-bound, bound)
        elif p.ndim == 1 and name.endswith("weight"):
            p.uniform_(0.8, 1.2)
        else:  # biases, layer scale, GRN
            p.uniform_(-0.3, 0.3)
    return module.eval()


def on_meta(build):
    """Build without the random init (the cost would be the init, not the test), then allocate."""
    with torch.device("meta"):
        m = build()
    return m.to_empty(device="cpu")


def _norm_eps(model: nn.Module) -> set[float]:
    return {m.eps for m in model.modules() if hasattr(m, "eps") and "norm" in type(m).__name__.lower()}


@torch.no_grad()
def _outputs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The logits, the last feature map and the embedding before the classifier."""
    feats = model.forward_features(x)
    return model(x), feats, model.forward_head(feats, pre_logits=True)


@pytest.mark.parametrize("arch", NEW)
def test_timm_variant_gives_timms_logits_features_and_embedding(arch: str) -> None:
    opts = SHRUNK.get(arch, {})
    ref = randomize_(on_meta(lambda: timm.create_model(arch, pretrained=False, num_classes=10, **opts)))
    prepared = prepare(ref.state_dict())
    if not opts:  # the shapes and keys name the variant (norm_pre, pre_logits, stem, bias-free norms)
        assert prepared.info.arch == arch
    with torch.device("meta"):
        ours = convnext.create_model(arch, num_classes=10, **opts).eval()
    info = load_checkpoint(ours, prepared, assign=True)
    assert not info.missing and not info.unexpected
    x = torch.randn(*X)
    for name, a, b in zip(
        ("logits", "features", "pre_logits"), _outputs(ref, x), _outputs(ours, x), strict=True
    ):
        diff = (a - b).abs().max().item()
        assert diff <= TOL, f"{arch}: max |{name} difference| {diff:.2e}"
    assert _norm_eps(ours) == _norm_eps(ref)  # xxlarge: 1e-5 everywhere, which logits barely show
    # and back: ours written in timm's layout loads strictly into timm (conv_mlp shapes, head names)
    ref.load_state_dict(formats.from_ours(ours.state_dict(), formats.TIMM, arch), strict=True)


@pytest.mark.parametrize("arch", NEW)
def test_full_size_timm_layout_names_the_variant_and_round_trips(arch: str) -> None:
    with torch.device("meta"):
        ref = timm.create_model(arch, pretrained=False)
        ours = convnext.create_model(arch)
    sd = formats.to_ours(ref.state_dict(), formats.TIMM)
    assert formats.infer_arch(sd) == arch
    assert set(sd) == set(ours.state_dict())
    assert all(sd[k].shape == v.shape for k, v in ours.state_dict().items())
    back = formats.from_ours(ours.state_dict(), formats.TIMM, arch)
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in ref.state_dict().items()}


@pytest.mark.parametrize(
    "arch", ["convnext_tiny_hnf", "convnext_nano_ols", "convnext_zepto_rms", "convnext_xxlarge"]
)
def test_transformers_cannot_hold_timms_options(arch: str) -> None:
    with torch.device("meta"):
        sd = convnext.create_model(arch).state_dict()
    with pytest.raises(UserError, match="only timm can hold"):
        formats.from_ours(sd, formats.HF, arch)


def test_shrunk_variant_keeps_its_structure_through_a_file(tmp_path: Path) -> None:
    # weights no named variant has (a shrunk tiny_hnf) rebuild with their stem/norm/head from the keys
    ref = randomize_(timm.create_model("convnext_atto_ols", num_classes=5, head_norm_first=True, **_SMALL))
    src = tmp_path / "timm.pth"
    torch.save(ref.state_dict(), src)
    assert main(["convert", str(src), str(tmp_path / "ours.pth"), "--model", "convnext_atto_ols"]) == 0
    ours = convnext.create_model("convnext_atto_ols", pretrained=str(tmp_path / "ours.pth")).eval()
    x = torch.randn(*X)
    with torch.no_grad():
        assert (ref(x) - ours(x)).abs().max().item() <= TOL


def test_convert_cli_reads_a_timm_variant_and_writes_it_back(tmp_path: Path) -> None:
    ref = randomize_(timm.create_model("convnext_zepto_rms_ols", num_classes=7))
    src = tmp_path / "zepto.pth"
    torch.save({"state_dict": ref.state_dict()}, src)
    assert main(["convert", str(src), str(tmp_path / "ours.safetensors")]) == 0
    assert (
        main(["convert", str(tmp_path / "ours.safetensors"), str(tmp_path / "timm.pth"), "--to", "timm"]) == 0
    )
    ours = convnext.create_model("convnext_zepto_rms_ols", pretrained=str(tmp_path / "ours.safetensors"))
    x = torch.randn(*X)
    with torch.no_grad():
        assert (ref(x) - ours.eval()(x)).abs().max().item() <= TOL
    back = timm.create_model("convnext_zepto_rms_ols", num_classes=7)
    sd = torch.load(tmp_path / "timm.pth", weights_only=True)
    back.load_state_dict(sd.get("state_dict", sd.get("model", sd)), strict=True)


# ---------------------------------------------------------------------------------------------- DINOv3


def _dinov3(backbone: bool = False) -> nn.Module:
    tf = pytest.importorskip("transformers")
    config = tf.DINOv3ConvNextConfig(hidden_sizes=[40, 80, 160, 320], depths=[2, 2, 6, 2])  # atto's shape
    torch.manual_seed(0)
    if backbone:
        config.out_features = ["stage1", "stage2", "stage3", "stage4"]
        return randomize_(tf.DINOv3ConvNextBackbone(config))
    return randomize_(tf.DINOv3ConvNextModel(config))


def test_dinov3_convnext_loads_as_a_backbone_with_its_features(tmp_path: Path) -> None:
    ref = _dinov3()
    ref.save_pretrained(tmp_path / "dinov3")  # config.json + model.safetensors, as the Hub repos
    ours = convnext.create_model("convnext_atto", pretrained=str(tmp_path / "dinov3")).eval()
    assert ours.num_classes == 0  # no classifier: the pooled, normed features
    x = torch.randn(*X)
    with torch.no_grad():
        out = ref(pixel_values=x)
        assert (ours(x) - out.pooler_output).abs().max().item() <= TOL
        tokens = ours.forward_features(x).flatten(2).transpose(1, 2)  # its last_hidden_state: [pooled, map]
        assert (ours.norm(tokens) - out.last_hidden_state[:, 1:]).abs().max().item() <= TOL
    assert prepare(ref.state_dict()).info.format == formats.DINOV3


def test_dinov3_backbone_feature_maps_are_our_stages() -> None:
    ref = _dinov3(backbone=True)
    prepared = prepare(ref.state_dict())
    assert prepared.info.arch == "convnext_atto" and prepared.info.num_classes is None
    ours = convnext.create_model("convnext_atto", num_classes=0).eval()
    info = load_checkpoint(ours, prepared, strict=False)
    assert not info.unexpected and not info.missing  # no final norm: logged, "start fresh", as FCMAE's
    x = torch.randn(*X)
    with torch.no_grad():
        maps = ref(pixel_values=x).feature_maps
        _, inter = ours.forward_intermediates(x)
    assert len(maps) == len(inter) == 4
    assert all((a - b).abs().max().item() <= TOL for a, b in zip(maps, inter, strict=True))


# -------------------------------------------------------------------------------------------- registry


def test_every_timm_release_of_an_architecture_we_have_is_a_tag() -> None:
    archs = set(convnext.list_models())
    theirs = {t for t in timm.list_pretrained("convnext*") if t.partition(".")[0] in archs}
    assert theirs <= set(registry.REGISTRY), sorted(theirs - set(registry.REGISTRY))
    # (their preprocessing equals timm's pretrained_cfg: tests/test_presets.py checks every shared tag)


def test_clip_in12k_and_dinov3_entries_carry_their_preprocessing_and_heads() -> None:
    clip = registry.find_tag("convnext_base.clip_laion2b_augreg_ft_in12k_in1k")
    assert (
        clip.mean == registry.CLIP_MEAN
        and clip.std == registry.CLIP_STD
        and clip.mean != (0.485, 0.456, 0.406)
    )
    assert (clip.input_size, clip.crop_pct, clip.num_classes) == (256, 1.0, 1000)
    assert clip.url == "hf-hub:timm/convnext_base.clip_laion2b_augreg_ft_in12k_in1k"
    big = registry.find_tag("convnext_large_mlp.clip_laion2b_soup_ft_in12k_in1k_384")
    assert (big.input_size, big.crop_mode) == (384, "squash")
    cfg = registry.find_tag("convnext_xxlarge.clip_laion2b_soup_ft_in12k").pretrained_cfg()
    assert cfg["num_classes"] == 11821 and cfg["mean"] == registry.CLIP_MEAN
    assert "11821" in registry.find_tag("convnext_tiny.in12k").note
    assert "embedding" in registry.find_tag("convnext_base.clip_laion2b").note
    dino = registry.find_tag("convnext_tiny.dinov3_lvd1689m")
    assert dino.num_classes == 0 and "backbone" in dino.note and dino.crop_pct == 1.0
    hnf = registry.find_tag("convnext_tiny_hnf.a2h_in1k")
    assert hnf.url.endswith("convnext_tiny_hnf_a2h-ab7e9df2.pth") and hnf.crop_pct == 0.95
    zepto = registry.find_tag(registry.default_tag("convnext_zepto_rms"))
    assert zepto.mean == (0.5, 0.5, 0.5)
    assert registry.default_tag("convnext_large_mlp").endswith("_ft_in1k")  # a 1000-class head by default
    assert registry.default_tag("convnext_tiny") == "convnext_tiny.fb_in1k"  # the paper's, as before


# ----------------------------------------------------------------------------------------- interface


@pytest.mark.parametrize("arch", ["convnext_tiny_hnf", "convnext_large_mlp", "convnext_zepto_rms_ols"])
def test_variants_have_the_timm_interface(arch: str) -> None:
    torch.manual_seed(0)
    model = convnext.create_model(arch, num_classes=10, **SHRUNK.get(arch, {})).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, feats = model(x), model.forward_features(x)
        emb = model.forward_head(feats, pre_logits=True)
        assert torch.allclose(model.head(emb), logits, atol=1e-5)
        final, inter = model.forward_intermediates(x)
        assert torch.equal(final, feats) and len(inter) == 4
        model.reset_classifier(3)
        assert model(x).shape == (2, 3)
        model.reset_classifier(0)
        assert torch.allclose(model(x), emb, atol=1e-6)
        backbone = convnext.create_model(arch, features_only=True, **SHRUNK.get(arch, {})).eval()
        assert [f.shape[1] for f in backbone(x)] == backbone.feature_info.channels()


def test_a_tag_on_timms_hub_loads_from_the_hugging_face_cache(tmp_path: Path, monkeypatch) -> None:
    # convnext_zepto_rms.ra4_e3600_r224_in1k lives at hf-hub:timm/...: a Hub cache laid out by hand, offline
    constants = pytest.importorskip("huggingface_hub.constants")
    from safetensors.torch import save_file

    tag = "convnext_zepto_rms.ra4_e3600_r224_in1k"
    ref = randomize_(timm.create_model("convnext_zepto_rms", num_classes=1000))
    repo = tmp_path / f"models--timm--{tag}"
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (snapshot / "config.json").write_text('{"architecture": "convnext_zepto_rms", "num_classes": 1000}')
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, snapshot / "model.safetensors")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    ours = convnext.create_model("convnext_zepto_rms", pretrained=tag).eval()
    assert (
        ours.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) and ours.pretrained_cfg["tag"] == tag.partition(".")[2]
    )
    x = torch.randn(*X)
    with torch.no_grad():
        assert (ref(x) - ours(x)).abs().max().item() <= TOL


def test_in12k_heads_get_timms_imagenet12k_words() -> None:
    from convnext.data.classes import default_class_names, default_descriptions
    from convnext.inference.loading import display_names

    info = timm.data.ImageNetInfo("imagenet12k")  # timm's own labels for its 11821-class heads
    words = [info.index_to_description(i) for i in range(11821)]
    assert default_descriptions(11821) == words
    assert display_names(None, 11821)[:3] == words[:3] == ["benthos", "cell", words[2]]
    assert default_class_names(registry.IMAGENET12K_CLASSES)[2] == "person"


def test_weights_table_keeps_its_columns_for_long_tags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--weights", "*clip*"]) == 0
    rows = capsys.readouterr().out.splitlines()[:-1]  # the last line is the footnote
    start = rows[0].index("dataset")
    assert all(r[start - 1] == " " and r[start] != " " for r in rows[1:]), rows[:3]
    assert any(len(r.split()[0]) > 44 for r in rows[1:])  # e.g. ..._soup_ft_in12k_in1k_320
