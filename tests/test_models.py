"""The models are the paper's: sizes, options, official names, init, and the deployment paths people use."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convnext import create_model
from convnext.cli.main import main
from convnext.models import FAMILIES as FAMILY_NAMES
from convnext.models import (
    GRN,
    VARIANTS,
    Block,
    BlockV2,
    ChunkedBlock,
    FusedBlock,
    build_model,
    chunked_mlp,
    family_of_name,
    fuse_for_inference,
    has_layer_scale_by_default,
    layer_scale_option,
    list_models,
)
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
    assert [r["model"] for r in rows] == list_models(family="isotropic")
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


@pytest.fixture
def always_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast blocks chunk at any size, in 256-row chunks (several, and a ragged last one)."""
    monkeypatch.setattr(chunked_mlp, "MIN_ROWS_TRAIN", 0)
    monkeypatch.setattr(chunked_mlp, "MIN_ROWS_INFER", 0)
    monkeypatch.setattr(chunked_mlp, "CHUNK_ELEMENTS", 1)


@torch.no_grad()
def _randomise(model: nn.Module, layer_scale: float | None = 1.0) -> nn.Module:
    """Layer scale 1 (at 1e-6 a dropped op hides in the rounding) and biases far from zero."""
    for name, p in model.named_parameters():
        if name.endswith("gamma") and p.ndim == 1:
            p.fill_(layer_scale) if layer_scale is not None else p.uniform_(-1, 1)
        elif name.endswith(("bias", "beta", "grn.gamma")):
            p.uniform_(-0.5, 0.5)
    return model


def _blocks(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules() if isinstance(m, Block)}


# ----------------------------------------------------------------------------- one block, module swaps


def test_one_block_serves_v1_and_v2() -> None:
    v1, v2 = create_model("convnext_atto").stages[0][0], create_model("convnextv2_atto").stages[0][0]
    assert isinstance(v1.grn, nn.Identity) and v1.gamma is not None
    assert type(v2) is Block and v2.gamma is None and v2.grn.gamma.shape == (1, 1, 1, 160)
    # timm's convention: layer scale is an option of any block, V2's included
    assert create_model("convnextv2_atto", layer_scale_init_value=1e-6).stages[0][0].gamma is not None


def test_default_model_is_the_reference_with_fast_blocks_swapped_in() -> None:
    ref = build_model("convnext_atto", chunked_mlp=False)
    fast = build_model("convnext_atto")
    assert _blocks(ref) == {Block} and _blocks(fast) == {ChunkedBlock}
    assert _blocks(create_model("convnext_atto", chunked_mlp=False)) == {Block}
    assert _blocks(create_model("convnextv2_atto")) == {Block}  # GRN needs the whole map: never chunked
    assert _blocks(create_model("convnext_isotropic_small")) == {ChunkedBlock}
    assert list(ref.state_dict()) == list(fast.state_dict())
    # The swap keeps the block objects and their parameters: an optimizer built before still holds them.
    params = list(fast.parameters())
    assert set_chunked_mlp(fast, False) is fast and _blocks(fast) == {Block}
    assert all(a is b for a, b in zip(params, fast.parameters(), strict=True))
    assert _blocks(set_chunked_mlp(fast, True)) == {ChunkedBlock}


def _block_out_and_grads(block: Block, x: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    block.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    out = block(x)
    out.backward(g)
    return [out.detach(), x.grad] + [p.grad for p in block.parameters()]


@pytest.mark.parametrize("layer_scale", [0.5, 0.0])
@pytest.mark.parametrize("channels_last", [True, False])
def test_chunked_block_equals_the_plain_ops_in_output_and_every_gradient(
    layer_scale: float, channels_last: bool, always_chunked: None
) -> None:
    torch.manual_seed(0)
    plain = Block(24, drop_path=0.3, layer_scale_init_value=layer_scale)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(torch.randn_like(p) * 0.2)  # non-trivial LN affine, biases and layer scale
    fast = set_chunked_mlp(copy.deepcopy(plain), True)
    x = torch.randn(7, 24, 10, 10)  # 700 rows: chunks of 256, 256, 188
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(7, 10, 10, 24).permute(0, 3, 1, 2)  # upstream grad in the other memory format
    plain.eval(), fast.eval()
    ref, got = _block_out_and_grads(plain, x, g), _block_out_and_grads(fast, x, g)
    names = ["output", "input"] + [n for n, _ in plain.named_parameters()]
    for name, a, b in zip(names, ref, got, strict=True):
        assert (a - b).abs().max() <= 1e-5 * a.abs().max(), name
    with torch.no_grad():
        plain_out = plain(x)
        assert (fast(x) - plain_out).abs().max() <= 1e-5 * plain_out.abs().max()
        # no_grad in train mode: the branch, then stochastic depth, with the same random draws
        plain.train(), fast.train()
        torch.manual_seed(3)
        plain_out = plain(x)
        torch.manual_seed(3)
        assert (fast(x) - plain_out).abs().max() <= 1e-5 * plain_out.abs().max()


@pytest.mark.parametrize("layer_scale", [True, False])
def test_the_fp32_and_bf16_training_loops_are_one_loop_with_other_kernels(
    layer_scale: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both autograd Functions called directly (any CPU: the bf16 GEMMs run emulated where not native), in
    # ragged chunks, against the plain ops in fp32: the same function and gradients, bf16 to its rounding.
    monkeypatch.setattr(chunked_mlp, "CHUNK_ELEMENTS", 1)  # 256-row chunks: 256, 256, 188
    monkeypatch.setattr(chunked_mlp, "CHUNK_ELEMENTS_BF16", 1)
    torch.manual_seed(0)
    dim = 16
    y = torch.randn(700, dim)
    params = [1 + 0.2 * torch.randn(dim), 0.2 * torch.randn(dim), 0.2 * torch.randn(4 * dim, dim)]
    params += [0.2 * torch.randn(4 * dim), 0.2 * torch.randn(dim, 4 * dim), 0.2 * torch.randn(dim)]
    params.append(torch.rand(dim) + 0.5 if layer_scale else None)
    g = torch.randn(700, dim)

    def run(fn: object, y_in: torch.Tensor) -> list[torch.Tensor]:
        leaves = [y_in.detach().requires_grad_()] + [
            p.clone().requires_grad_() if p is not None else None for p in params
        ]
        if fn is None:  # the reference: the block's MLP as plain ops
            yy, ln_w, ln_b, w1, b1, w2, b2, gamma = leaves
            h = F.gelu(F.linear(F.layer_norm(yy, [dim], ln_w, ln_b, 1e-6), w1, b1))
            out = F.linear(h, w2, b2) * (gamma if gamma is not None else 1)
        else:
            out = fn.apply(*leaves, 1e-6)
        out.backward(g)
        return [out.detach().float()] + [t.grad.float() for t in leaves if t is not None]

    ref = run(None, y)
    fp32 = run(chunked_mlp._ChannelMLP, y)
    bf16 = run(chunked_mlp._ChannelMLPBf16, y.bfloat16())
    for i, (a, b, c) in enumerate(zip(ref, fp32, bf16, strict=True)):
        scale = a.abs().max()
        assert (a - b).abs().max() <= 1e-5 * scale, i
        assert (a - c).abs().max() <= 5e-2 * scale, i


def test_a_partly_frozen_block_trains_what_is_left(always_chunked: None) -> None:
    torch.manual_seed(0)
    plain = Block(16, layer_scale_init_value=0.5)
    fast = set_chunked_mlp(copy.deepcopy(plain), True)
    x = torch.randn(2, 16, 8, 8)
    grads = []
    for block in (plain, fast):
        block.requires_grad_(False).dwconv.requires_grad_(True)  # e.g. an MLP frozen for fine-tuning
        block(x).square().sum().backward()
        grads.append(block.dwconv.weight.grad)
    assert (grads[0] - grads[1]).abs().max() <= 1e-5 * grads[0].abs().max()


def test_chunked_mlp_saves_about_half_the_activations(always_chunked: None) -> None:
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
        set_chunked_mlp(block, chunked)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            block(x.requires_grad_())
        sizes[chunked] = sum(saved)
    # In units of (pixels x C). Plain: dwconv input, LN input, LN output, hidden, GELU(hidden), projection:
    # 1+1+1+4+4+1. Chunked: dwconv input, LN input, hidden: 1+1+4.
    assert sizes[True] / sizes[False] == pytest.approx(6 / 12)


def _loss_and_grads(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def test_training_step_is_the_same_with_and_without_chunked_mlp(always_chunked: None) -> None:
    torch.manual_seed(0)
    model = _randomise(create_model("convnext_atto", drop_path_rate=0.1), layer_scale=None).train()
    x = torch.randn(2, 3, 64, 64)
    set_chunked_mlp(model, False)
    torch.manual_seed(1)
    ref_out, ref_grads = _loss_and_grads(model, x)
    set_chunked_mlp(model, True)
    torch.manual_seed(1)  # same stochastic-depth draws
    out, grads = _loss_and_grads(model, x)
    assert (out - ref_out).abs().max() <= 1e-5 * ref_out.abs().max()
    for a, b in zip(ref_grads, grads, strict=True):
        assert (a - b).abs().max() <= 1e-5 * max(a.abs().max().item(), 1e-12)


def test_inference_weights_follow_every_change_of_the_parameters(always_chunked: None) -> None:
    torch.manual_seed(0)
    fast = _randomise(create_model("convnext_atto")).eval()
    ref = create_model("convnext_atto", chunked_mlp=False).eval()
    x = torch.randn(2, 3, 64, 64)

    def same() -> bool:
        ref.load_state_dict(fast.state_dict())
        with torch.no_grad():
            want = ref(x)
            return bool((fast(x) - want).abs().max() <= 1e-5 * want.abs().max())

    assert same()  # builds the cached folded weights
    fast.load_state_dict(_randomise(create_model("convnext_atto"), layer_scale=None).state_dict())
    assert same()
    with torch.no_grad():
        fast.stages[0][0].gamma.mul_(-2)  # in place: the version counter moves
        fast.stages[1][0].pwconv2.bias.add_(1)
    assert same()
    fast.stages[2][0].pwconv1.weight = nn.Parameter(torch.randn_like(fast.stages[2][0].pwconv1.weight))
    assert same()
    # Changes no version counter records: fused AdamW's kernel, and writes through .data (EMA code does this)
    opt = torch.optim.AdamW(fast.parameters(), lr=0.1, fused=True)
    for p in fast.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    assert same()
    fast.stages[0][0].pwconv2.weight.data.mul_(3)
    assert same()


# ----------------------------------------------------------------------------- the per-shape rule


def test_each_call_takes_the_chunked_path_only_where_it_is_faster() -> None:
    # Block inputs of ConvNeXt-T at 224 px: stage 1 is (N, 96, 56, 56), stage 3 (N, 384, 14, 14), stage 4
    # (N, 768, 7, 7): batch 1 runs the plain ops everywhere, batch 32 chunks its big stages.
    stage1, stage3, stage4 = (96, 56, 56), (384, 14, 14), (768, 7, 7)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            assert not any(use_chunked_mlp(torch.empty(1, *s)) for s in (stage1, stage3, stage4))
            assert use_chunked_mlp(torch.empty(32, *stage1)) and use_chunked_mlp(torch.empty(32, *stage3))
            assert not use_chunked_mlp(torch.empty(32, *stage4))  # 1568 rows: level, so the plain ops
            assert use_chunked_mlp(torch.empty(1, 96, 128, 128))  # batch 1 at 512 px: stage 1 has the rows
    with torch.no_grad():  # training pays per-call weight transposes: it needs more rows
        assert use_chunked_mlp(torch.empty(2, 384, 80, 32)) and not use_chunked_mlp(
            torch.empty(2, 384, 80, 32), grad=True
        )
    big = torch.empty(32, *stage1)
    assert not use_chunked_mlp(big.double()) and not use_chunked_mlp(big.bfloat16())
    assert not use_chunked_mlp(torch.empty(32, *stage1, device="meta"))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the bf16 loop (tests/test_bf16.py), or fp32 without
        assert chunked_mlp.chunked_path(big) == ("bf16" if chunked_mlp.native_bf16() else "fp32")
    with torch.utils.flop_counter.FlopCounterMode(display=False):
        assert not use_chunked_mlp(big)


def test_the_model_runs_the_path_the_rule_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    loop = chunked_mlp.mlp_chunks

    def counting(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(x.shape[0])
        return loop(x, *args, **kwargs)

    monkeypatch.setattr(chunked_mlp, "mlp_chunks", counting)
    model = create_model("convnext_atto").eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
        assert calls == []  # batch 1 at 224: the plain ops in every block
        model(torch.randn(8, 3, 224, 224))
    expected = [r for r, d in zip((8 * 3136, 8 * 784, 8 * 196, 8 * 49), model.depths) for _ in range(d)]
    expected = [r for r in expected if r >= chunked_mlp.MIN_ROWS_INFER]
    assert calls == expected and calls


# ----------------------------------------------------------------------------- graph capture and export


@pytest.mark.filterwarnings("ignore:`torch.jit.trace.*is deprecated:FutureWarning")
@pytest.mark.parametrize("kind", ["default", "fused"])
def test_traced_and_exported_models_are_the_plain_model(kind: str, always_chunked: None) -> None:
    # Layer scale 1 and random biases: a dropped dwconv, LN or MLP (the old fused trace) shows in the logits.
    torch.manual_seed(0)
    ref = _randomise(create_model("convnext_atto", chunked_mlp=False)).eval()
    model = fuse_for_inference(ref, chunk_rows=100) if kind == "fused" else create_model("convnext_atto")
    model.load_state_dict(ref.state_dict())
    model.eval()
    x2, x5 = torch.randn(2, 3, 64, 64), torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        want = ref(x5)
        assert (model(x5) - want).abs().max() <= 1e-5 * want.abs().max()  # eager: the chunked path
        traced = torch.jit.trace(model, x2)
        assert (traced(x5) - want).abs().max() <= 1e-5 * want.abs().max()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (x2,), dynamic_shapes=({0: batch},))
    with torch.no_grad():
        assert (program.module()(x5) - want).abs().max() <= 1e-5 * want.abs().max()


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
def test_onnx_export_of_the_fused_model_is_the_plain_model(tmp_path: Path, always_chunked: None) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    ref = _randomise(create_model("convnext_atto", chunked_mlp=False)).eval()
    fused = fuse_for_inference(ref, chunk_rows=100)
    path = tmp_path / "fused.onnx"
    x2, x5 = torch.randn(2, 3, 64, 64), torch.randn(5, 3, 64, 64)
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(fused, (x2,), str(path), dynamo=True, dynamic_shapes=({0: batch},), verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x5.numpy()})
    with torch.no_grad():
        want = ref(x5)
    assert (torch.from_numpy(got) - want).abs().max() <= 1e-5 * want.abs().max()


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


def test_fused_model_keeps_the_plain_names_and_leaves_the_model_alone() -> None:
    model = create_model("convnext_atto")
    fused = fuse_for_inference(model)
    assert list(fused.state_dict()) == list(model.state_dict())
    assert _blocks(fused) == {FusedBlock} and _blocks(model) == {ChunkedBlock}
    assert not any(p.requires_grad for p in fused.parameters()) and not fused.training
    assert all(p.requires_grad for p in model.parameters())


# ----------------------------------------------------------------------------- one interface, every family

FAMILIES_FIRST_BLOCK = {"v1": "stages.0.0", "v2": "stages.0.0", "isotropic": "blocks.0"}
FAMILIES = {  # small members of each family, same code paths
    "v1": lambda **kw: create_model("convnext_atto", **kw),
    "v2": lambda **kw: create_model("convnextv2_atto", **kw),
    "isotropic": lambda **kw: create_model("convnext_isotropic_small", depth=6, dim=32, **kw),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_the_timm_interface(family: str) -> None:
    torch.manual_seed(0)
    model = FAMILIES[family](num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
        emb = model.forward_head(feats, pre_logits=True)
        assert torch.allclose(model.forward_head(feats), logits, atol=1e-5)
        assert model.get_classifier() is model.head and torch.allclose(model.head(emb), logits, atol=1e-5)
        final, inter = model.forward_intermediates(x)
        assert torch.equal(final, feats) and len(inter) == len(model.feature_info) == model.num_taps
        assert [f.shape[1] for f in inter] == model.feature_info.channels()
        assert [64 // f.shape[-1] for f in inter] == model.feature_info.reduction()
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(last2, inter[-2:], strict=True))
        first = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        assert len(first) == 1 and torch.equal(first[0], inter[0])
        model.reset_classifier(3)
        assert model(x).shape == (2, 3) and model.num_classes == 3
        model.reset_classifier(0)
        assert torch.allclose(model(x), emb, atol=1e-6)
    assert model.feature_info.module_name()[0] in ("stages.0", "blocks.0")


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_calls_the_trunk_modules_that_hooks_target(family: str) -> None:
    # Grad-CAM hooks the deepest tap the model names in feature_info: the last stage, or the last block.
    model = FAMILIES[family]().eval()
    target = model.get_submodule(model.feature_info.module_name()[-1])
    seen: list[torch.Size] = []
    target.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert len(seen) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_the_model_says_its_family_and_the_smallest_input_it_takes(family: str) -> None:
    model = FAMILIES[family]().eval()
    assert (
        model.family
        == family
        == family_of_name(f"{model.variant}.some_tag")
        == VARIANTS[model.variant].family
    )
    assert model.family in FAMILY_NAMES
    side = model.reduction
    assert side == (16 if family == "isotropic" else 32)
    with torch.no_grad():
        assert model(torch.randn(1, 3, side, side)).shape == (1, 1000)
        with pytest.raises(RuntimeError):
            model(torch.randn(1, 3, side - 1, side - 1))
    backbone = FAMILIES[family](features_only=True, out_indices=(0,))
    assert backbone.family == family and backbone.reduction == side  # the trunk's, whatever is tapped
    with pytest.raises(ValueError, match="unknown model"):
        family_of_name("convnext_nonesuch")


def test_the_layer_scale_key_applies_as_training_builds_each_family() -> None:
    assert layer_scale_option("v1", 1e-6) == {"layer_scale_init_value": 1e-6}
    assert layer_scale_option("v1", 0.0) == {"layer_scale_init_value": 0.0}
    assert layer_scale_option("v2", 1e-6) == {}  # GRN replaces it
    assert layer_scale_option("isotropic", 0.0) == {} and layer_scale_option("isotropic", 1e-6)
    for name in ("convnext_atto", "convnextv2_atto", "convnext_isotropic_small"):
        family = family_of_name(name)
        gamma = build_model(name, num_classes=2).get_submodule(FAMILIES_FIRST_BLOCK[family]).gamma
        assert (gamma is not None) == has_layer_scale_by_default(family)


def test_blockv2_is_a_block_class_with_grn_and_no_layer_scale() -> None:
    block = BlockV2(8, drop_path=0.1)
    assert isinstance(block, Block) and issubclass(BlockV2, Block)
    assert block.gamma is None and isinstance(block.grn, GRN) and block.drop_path.p == 0.1
    plain = Block(8, 0.1, layer_scale_init_value=None, use_grn=True)
    assert block.state_dict().keys() == plain.state_dict().keys()
    # the networks build the one Block; set_chunked_mlp leaves GRN blocks alone whatever their class
    assert type(set_chunked_mlp(nn.Sequential(block), True)[0]) is BlockV2


def test_hierarchical_feature_info_and_out_indices() -> None:
    torch.manual_seed(0)
    classifier = create_model("convnext_atto")
    assert classifier.feature_info == [
        {"num_chs": c, "reduction": r, "module": f"stages.{i}"}
        for i, (c, r) in enumerate(zip((40, 80, 160, 320), (4, 8, 16, 32)))
    ]
    backbone = create_model("convnext_atto", features_only=True, out_indices=(1, 2, 3)).eval()
    assert not hasattr(backbone, "head") and not hasattr(backbone, "norm0")
    assert backbone.feature_info.channels() == [80, 160, 320]
    assert backbone.feature_info.reduction() == [8, 16, 32]
    assert backbone.feature_info.module_name() == ["stages.1", "stages.2", "stages.3"]
    with pytest.raises(ValueError, match="out_indices"):
        create_model("convnext_atto", features_only=True, out_indices=(2, 1))


def test_features_only_gives_the_normed_stages() -> None:
    torch.manual_seed(0)
    backbone = create_model("convnext_atto", features_only=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = backbone(x)
        shapes = [(1, 40, 16, 16), (1, 80, 8, 8), (1, 160, 4, 4), (1, 320, 2, 2)]  # strides 4, 8, 16, 32
        assert [tuple(f.shape) for f in feats] == shapes
        h = x
        for i in range(4):
            h = backbone.stages[i](backbone.downsample_layers[i](h))
            assert torch.allclose(feats[i], getattr(backbone, f"norm{i}")(h), atol=1e-6)
        three = create_model("convnext_atto", features_only=True, out_indices=(1, 2, 3)).eval()
        three.load_state_dict({k: v for k, v in backbone.state_dict().items() if not k.startswith("norm0")})
        assert all(torch.equal(a, b) for a, b in zip(three(x), feats[1:], strict=True))
    assert {"norm0.weight", "norm3.bias"} <= set(backbone.state_dict())


def test_isotropic_features_only_taps_four_blocks() -> None:
    torch.manual_seed(0)
    backbone = create_model("convnext_isotropic_small", features_only=True).eval()
    assert backbone.out_indices == (3, 8, 12, 17)
    assert backbone.feature_info.reduction() == [16] * 4 and backbone.feature_info.channels() == [384] * 4
    assert not hasattr(backbone, "head") and not hasattr(backbone, "norm")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = backbone(x)
        h = backbone.stem(x)
        taps = []
        for blk in backbone.blocks:
            h = blk(h)
            taps.append(h)
    assert all(torch.equal(f, taps[i]) for f, i in zip(feats, (3, 8, 12, 17), strict=True))


@pytest.mark.parametrize("arch", ["convnext_atto", "convnext_isotropic_small"])
def test_features_only_backbone_loads_pretrained_classifier_weights(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create_model(arch, num_classes=10)
    path = tmp_path / f"{arch}.pth"
    torch.save({"model": source.state_dict()}, path)
    kw = {"out_indices": (1, 2, 3)} if arch == "convnext_atto" else {}
    backbone = create_model(arch, pretrained=str(path), features_only=True, **kw).eval()
    for k, v in backbone.state_dict().items():
        if not k.startswith("norm"):
            assert torch.equal(v, source.state_dict()[k]), k
    with torch.no_grad():
        assert len(backbone(torch.randn(1, 3, 64, 64))) == (3 if kw else 4)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_changes_nothing_but_memory(family: str) -> None:
    torch.manual_seed(0)
    model = _randomise(FAMILIES[family](drop_path_rate=0.0), layer_scale=None).train()
    x = torch.randn(2, 3, 64, 64)
    out_a, grads_a = _loss_and_grads(model, x)
    model.set_grad_checkpointing(True)
    out_b, grads_b = _loss_and_grads(model, x)
    assert torch.equal(out_a, out_b)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(grads_a, grads_b, strict=True))
    torch.optim.AdamW(model.parameters()).step()  # a whole training step with checkpointing on


def test_model_grad_checkpointing_key_trains_every_family(tmp_path: Path) -> None:
    from convnext.engine.config import load_config
    from convnext.engine.train import build_model

    for name in ("convnext_isotropic_small", "convnextv2_atto"):
        overrides = [f"model.name={name}", "model.grad_checkpointing=true"]
        model = build_model(load_config(None, overrides, check_paths=False), 4)
        assert model.grad_checkpointing
        model(torch.randn(1, 3, 32, 32)).sum().backward()
    # the recipe's layer-scale default is V1's: V2 keeps its official (GRN, no layer scale) parameters
    v2 = build_model(load_config(None, ["model.name=convnextv2_atto"], check_paths=False), 4)
    assert not any(k.endswith(".gamma") and ".grn." not in k for k in v2.state_dict())


# ----------------------------------------------------------------------------- memory format at the boundary


@pytest.mark.parametrize("family", FAMILIES)
def test_outputs_are_equal_and_follow_the_inputs_memory_format(family: str) -> None:
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    backbone = FAMILIES[family](features_only=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref_logits, ref_feats = model(x), model.forward_features(x)
        ref_inter = model.forward_intermediates(x, intermediates_only=True)
        ref_backbone = backbone(x)
        for fmt in (torch.contiguous_format, torch.channels_last):
            xf = x.contiguous(memory_format=fmt)
            assert (model(xf) - ref_logits).abs().max() <= 1e-5
            outs = [model.forward_features(xf), *model.forward_intermediates(xf, intermediates_only=True)]
            outs += backbone(xf)
            refs = [ref_feats, *ref_inter, *ref_backbone]
            for out, ref in zip(outs, refs, strict=True):
                assert (out - ref).abs().max() <= 1e-5
                assert (
                    out.is_contiguous(memory_format=fmt)
                    and (fmt == torch.channels_last) != out.is_contiguous()
                )


def test_grn_is_the_papers_formula_in_one_pass_over_its_input() -> None:
    """GRN computes gamma * (x * N(G(x))) + beta + x (ConvNeXt V2, eq. 3) with values and gradients equal to
    that formula, but reads its input, the block's 4C-wide activation, in two ops (the norm, then one
    multiply-add) instead of five (V2-T on CPU against timm: inference 0.93x -> 1.29x, BENCHMARKS.md)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from convnext.models.layers import GRN

    torch.manual_seed(0)
    grn = GRN(8)
    with torch.no_grad():
        grn.gamma.normal_()
        grn.beta.normal_()
    x = torch.randn(2, 5, 5, 8, requires_grad=True)
    gx = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + grn.eps)
    ref = grn.gamma * (x * nx) + grn.beta + x
    out = grn(x)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(ref)
    want = torch.autograd.grad(ref, [x, grn.gamma, grn.beta], g)
    got = torch.autograd.grad(out, [x, grn.gamma, grn.beta], g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    class FullSizeReads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if any(isinstance(a, torch.Tensor) and a.shape == x.shape for a in args):
                FullSizeReads.count += 1
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), FullSizeReads():
        grn(x)
    assert FullSizeReads.count == 2
