"""The models are the paper's: sizes, options, official names, init, and the deployment paths people use."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn.functional as F

from convnext import create_model
from convnext.cli.main import main
from convnext.models import Block, chunked_mlp, list_models
from convnext.models.chunked_mlp import set_chunked_mlp, use_chunked_mlp
from convnext.models.profile import model_stats

# (params in M, GMACs) at 224 px and 1000 classes, as printed in the papers' tables.
PAPER_V1 = {
    "convnext_tiny": (28.6, 4.5),
    "convnext_small": (50.2, 8.7),
    "convnext_base": (88.6, 15.4),
    "convnext_large": (197.8, 34.4),
    "convnext_xlarge": (350.2, 60.9),
}
PAPER_ISOTROPIC = {  # the isotropic table rounds params to whole millions
    "convnext_isotropic_small": (22, 4.3),
    "convnext_isotropic_base": (87, 16.9),
    "convnext_isotropic_large": (306, 59.7),
}


@pytest.mark.parametrize("name", PAPER_V1)
def test_v1_params_and_flops_match_the_paper(name: str) -> None:
    stats = model_stats(name)
    assert (round(stats["params_m"], 1), round(stats["gflops"], 1)) == PAPER_V1[name]


@pytest.mark.parametrize("name", PAPER_ISOTROPIC)
def test_isotropic_params_and_flops_match_the_paper(name: str) -> None:
    stats = model_stats(name)
    assert (round(stats["params_m"]), round(stats["gflops"], 1)) == PAPER_ISOTROPIC[name]


def test_models_verb_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--family", "isotropic", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["model"] for r in rows] == list_models("isotropic")
    assert round(rows[0]["params_m"]) == 22
    assert main(["models", "--family", "v1"]) == 0
    out = capsys.readouterr().out
    assert "convnext_tiny" in out and "28.6" in out and "4.5" in out


def test_every_listed_model_runs_forward() -> None:
    # The small ones for real; the big ones on the meta device (shapes only, no memory).
    x = torch.randn(1, 3, 32, 32)
    for name in ("convnext_atto", "convnextv2_atto"):
        assert create_model(name, num_classes=5).eval()(x).shape == (1, 5)
    with torch.device("meta"):
        for name in list_models():
            model = create_model(name, num_classes=7)
            assert model.variant == name
            assert model(torch.empty(2, 3, 64, 64)).shape == (2, 7)


def test_options_classes_channels_and_head_init() -> None:
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=10, in_chans=1, head_init_scale=0.001).eval()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert model.downsample_layers[0][0].weight.shape[1] == 1
    assert model.num_classes == 10 and model.num_features == 320
    assert model.head.weight.std().item() == pytest.approx(0.02 * 0.001, rel=0.1)  # init std, then scaled


def test_stochastic_depth_rises_linearly_over_blocks() -> None:
    model = create_model("convnext_atto", drop_path_rate=0.3)
    rates = [blk.drop_path.p for stage in model.stages for blk in stage]
    assert len(rates) == sum(model.depths) == 12
    assert rates == pytest.approx([0.3 * i / 11 for i in range(12)])
    iso = create_model("convnext_isotropic_small", drop_path_rate=0.1)
    iso_rates = [blk.drop_path.p for blk in iso.blocks]
    assert iso_rates[0] == 0 and iso_rates[-1] == pytest.approx(0.1) and len(iso_rates) == 18


def test_layer_scale_init() -> None:
    model = create_model("convnext_atto")
    assert torch.equal(model.stages[0][0].gamma, torch.full((40,), 1e-6))
    assert create_model("convnext_atto", layer_scale_init_value=0.0).stages[0][0].gamma is None
    assert create_model("convnext_isotropic_small").blocks[0].gamma is None  # the official isotropic default


def test_reset_classifier_and_pre_logits() -> None:
    torch.manual_seed(0)
    model = create_model("convnext_atto").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 320, 1, 1)
        emb = model.forward_head(feats, pre_logits=True)
        norm = model.norm
        assert torch.allclose(emb, F.layer_norm(feats.mean((2, 3)), (320,), norm.weight, norm.bias, 1e-6))
        assert torch.allclose(model(x), model.head(emb))
        model.reset_classifier(3)
        assert model(x).shape == (2, 3) and model.num_classes == 3
        model.reset_classifier(0)
        assert torch.allclose(model(x), emb)


def test_features_only_gives_four_normed_stages() -> None:
    torch.manual_seed(0)
    backbone = create_model("convnext_atto", features_only=True).eval()
    assert not hasattr(backbone, "head")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = backbone(x)
        shapes = [(1, 40, 16, 16), (1, 80, 8, 8), (1, 160, 4, 4), (1, 320, 2, 2)]  # strides 4, 8, 16, 32
        assert [tuple(f.shape) for f in feats] == shapes
        h = x
        for i in range(4):
            h = backbone.stages[i](backbone.downsample_layers[i](h))
            assert torch.allclose(feats[i], getattr(backbone, f"norm{i}")(h), atol=1e-6)
    assert {"norm0.weight", "norm3.bias"} <= set(backbone.state_dict())


def _loss_and_grads(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def test_gradient_checkpointing_changes_nothing_but_memory() -> None:
    torch.manual_seed(0)
    model = create_model("convnext_atto").train()
    x = torch.randn(2, 3, 32, 32)
    out_a, grads_a = _loss_and_grads(model, x)
    model.set_grad_checkpointing(True)
    out_b, grads_b = _loss_and_grads(model, x)
    model.set_grad_checkpointing(False)
    assert torch.equal(out_a, out_b)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(grads_a, grads_b))


def test_channels_last_gives_equal_outputs() -> None:
    torch.manual_seed(0)
    model = create_model("convnext_atto").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert (out - ref).abs().max() <= 1e-5


def test_init_is_the_official_trunc_normal_002_with_zero_biases() -> None:
    # The official code calls trunc_normal_(w, std=.02) with the default bounds a=-2, b=2, which are absolute,
    # not in units of std: at std 0.02 nothing is ever cut, so the weights are N(0, 0.02) (a 590k-sample
    # weight reaches ~5 std). We keep that, to train exactly like the paper; the bound still holds.
    torch.manual_seed(0)
    model = create_model("convnext_tiny")
    big = model.stages[2][0].pwconv1.weight  # 1536 x 384
    assert big.std().item() == pytest.approx(0.02, rel=0.02)
    assert big.mean().abs() <= 1e-3
    assert 0.04 < big.abs().max() <= 0.02 * 7
    assert model.head.weight.std().item() == pytest.approx(0.02, rel=0.05)
    for name, p in model.named_parameters():
        if name.endswith("bias") and "norm" not in name and not name.startswith("downsample_layers.0.1"):
            assert not p.any(), name


def test_official_state_dict_names() -> None:
    v1 = create_model("convnext_atto").state_dict()
    for key in (
        "downsample_layers.0.0.weight",
        "downsample_layers.0.1.weight",
        "downsample_layers.1.0.weight",
        "downsample_layers.3.1.bias",
        "stages.0.0.gamma",
        "stages.0.0.dwconv.weight",
        "stages.0.0.norm.weight",
        "stages.0.0.pwconv1.weight",
        "stages.3.1.pwconv2.bias",
        "norm.weight",
        "head.weight",
    ):
        assert key in v1, key
    v2 = create_model("convnextv2_atto").state_dict()
    assert v2["stages.0.0.grn.gamma"].shape == (1, 1, 1, 160) and "stages.0.0.grn.beta" in v2
    assert not any(k.endswith("gamma") and "grn" not in k for k in v2)
    iso = create_model("convnext_isotropic_small").state_dict()
    assert {"stem.weight", "blocks.0.dwconv.weight", "blocks.17.pwconv2.weight", "head.bias"} <= set(iso)


def test_torch_export_runs_with_equal_outputs() -> None:
    torch.manual_seed(0)
    model = create_model("convnext_atto").eval()
    x = torch.randn(1, 3, 32, 32)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(program.module()(x), model(x), atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace.*is deprecated:FutureWarning")
def test_jit_trace_gives_a_model_that_takes_other_batch_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    # 256-row chunks: traced on 512 stage-1 rows, run on 1280. A trace of the chunk loop would keep 2 chunks.
    monkeypatch.setattr(chunked_mlp, "CHUNK_ELEMENTS", 1)
    torch.manual_seed(0)
    model = create_model("convnext_atto").eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(2, 3, 64, 64))
        x = torch.randn(5, 3, 64, 64)
        assert torch.allclose(traced(x), model(x), atol=1e-5)


def test_torch_compile_runs_with_equal_outputs() -> None:
    # inductor's C++ compile: ~25 s with a cold cache on an idle 2-core machine, minutes when it is loaded.
    torch.manual_seed(0)
    model = create_model("convnext_atto").eval()
    x = torch.randn(1, 3, 32, 32)
    start = time.perf_counter()
    compiled = torch.compile(model)
    with torch.no_grad():
        out = compiled(x)
        assert torch.allclose(out, model(x), atol=1e-5)
    print(f"compile + first call: {time.perf_counter() - start:.1f}s")


def _block_out_and_grads(block: Block, x: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    block.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    out = block(x)
    out.backward(g)
    return [out.detach(), x.grad] + [p.grad for p in block.parameters()]


@pytest.mark.parametrize("layer_scale", [0.5, 0.0])
@pytest.mark.parametrize("channels_last", [True, False])
def test_chunked_mlp_equals_the_plain_ops_in_output_and_every_gradient(
    layer_scale: float, channels_last: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 700 rows in chunks of 256 (the minimum): several chunks and a ragged last one.
    monkeypatch.setattr(chunked_mlp, "CHUNK_ELEMENTS", 1)
    torch.manual_seed(0)
    block = Block(24, layer_scale_init_value=layer_scale)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn_like(p) * 0.2)  # non-trivial LN affine, biases and layer scale
    x = torch.randn(7, 24, 10, 10)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(7, 10, 10, 24).permute(0, 3, 1, 2)  # upstream grad in the other memory format
    block.chunked = False
    ref = _block_out_and_grads(block, x, g)
    block.chunked = True
    got = _block_out_and_grads(block, x, g)
    names = ["output", "input"] + [n for n, _ in block.named_parameters()]
    for name, a, b in zip(names, ref, got, strict=True):
        assert (a - b).abs().max() <= 1e-5 * a.abs().max(), name
    with torch.no_grad():
        block.chunked = False
        plain = block(x)
        block.chunked = True
        assert (block(x) - plain).abs().max() <= 1e-5 * plain.abs().max()


def test_chunked_mlp_saves_about_half_the_activations() -> None:
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.numel() > 10_000:  # activations, not weights
            saved.append(t.numel())
        return t

    block = Block(32)
    x = torch.randn(4, 32, 28, 28).contiguous(memory_format=torch.channels_last)
    sizes = {}
    for chunked in (False, True):
        saved.clear()
        block.chunked = chunked
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            block(x.requires_grad_())
        sizes[chunked] = sum(saved)
    # In units of (pixels x C). Plain: dwconv input, LN input, LN output, hidden, GELU(hidden), projection:
    # 1+1+1+4+4+1. Chunked: dwconv input, LN input, hidden: 1+1+4.
    assert sizes[True] / sizes[False] == pytest.approx(6 / 12)


def test_training_step_is_the_same_with_and_without_chunked_mlp() -> None:
    torch.manual_seed(0)
    model = create_model("convnext_atto", drop_path_rate=0.1).train()
    x = torch.randn(2, 3, 64, 64)
    set_chunked_mlp(model, False)
    torch.manual_seed(1)
    ref_out, ref_grads = _loss_and_grads(model, x)
    set_chunked_mlp(model, True)
    torch.manual_seed(1)  # same stochastic-depth draws
    out, grads = _loss_and_grads(model, x)
    assert (out - ref_out).abs().max() <= 1e-5
    for a, b in zip(ref_grads, grads, strict=True):
        assert (a - b).abs().max() <= 1e-5 * max(a.abs().max().item(), 1e-12)


def test_chunked_mlp_steps_aside_under_autocast() -> None:
    x = torch.randn(2, 4, 4, 8)
    assert use_chunked_mlp(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not use_chunked_mlp(x)
    assert not use_chunked_mlp(x.double())
