"""The bf16 paths on CPU compute what autocast computes on the reference model, to bf16 rounding.

Tolerances: bf16 keeps 8 significant bits (one rounding is up to 2^-9 = 2e-3 relative), and the chunked loop
rounds at other points than autocast does (layer scale folded into the projection before the cast, weight
gradients summed per chunk), so the two never agree to fp32 precision. Each result is therefore measured
against a float64 run of the same weights: ours must be within 1.5x autocast's own error of it (plus 2e-3),
and within a few bf16 roundings of autocast directly. A dropped or wrong op (layer scale set to 1, biases
and LayerNorm affine far from their init, so nothing hides in the rounding) is an O(1) error.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convnext.models import Block, build_model, chunked_mlp, cpu, fuse_for_inference, set_chunked_mlp

BF16 = torch.bfloat16
needs_native_bf16 = pytest.mark.skipif(
    not chunked_mlp.native_bf16(), reason="no native bf16 on this CPU: bf16 blocks compute in fp32"
)


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """256-row chunks in the bf16 loop: several per block, and a ragged last one."""
    monkeypatch.setattr(chunked_mlp, "CHUNK_ELEMENTS_BF16", 1)
    monkeypatch.setattr(chunked_mlp, "MIN_ROWS_BF16_TRAIN", 0)
    monkeypatch.setattr(chunked_mlp, "MIN_ROWS_BF16_INFER", 0)


def rel(a: Tensor, b: Tensor) -> float:
    """Relative error in norm of ``a`` against ``b``."""
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def assert_bf16_close(ours: Tensor, autocast: Tensor, exact: Tensor, what: str, direct: float = 5e-2) -> None:
    assert ours.dtype == autocast.dtype, what
    err, ref_err = rel(ours, exact), rel(autocast, exact)
    assert err <= 1.5 * ref_err + 2e-3, f"{what}: {err:.2e} from float64, autocast {ref_err:.2e}"
    assert rel(ours, autocast) <= direct, f"{what}: {rel(ours, autocast):.2e} from autocast"


@torch.no_grad()
def trained_like(model: nn.Module, layer_scale: float | None = 1.0) -> nn.Module:
    """Every parameter moved off its init: layer scale 1 (``None``: uniform in [0.5, 1.5], so that a gradient
    missing its layer-scale factor shows), LayerNorm affine and biases far from 1 and 0."""
    for name, p in model.named_parameters():
        if name.endswith("gamma"):
            p.fill_(layer_scale) if layer_scale is not None else p.uniform_(0.5, 1.5)
        elif p.ndim == 1:
            p.add_(torch.empty_like(p).uniform_(-0.5, 0.5))
        else:
            p.add_(torch.randn_like(p) * p.std().clamp_min(0.02))
    return model


def graph_nodes(t: Tensor) -> set[str]:
    """The autograd node names behind ``t``: which path a forward really took."""
    names, stack, seen = set(), [t.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        stack.extend(f for f, _ in fn.next_functions)
    return names


def out_and_grads(block: nn.Module, x: Tensor, g: Tensor, amp: bool) -> tuple[list[Tensor], set[str]]:
    block.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    with torch.autocast("cpu", dtype=BF16, enabled=amp):
        out = block(x)
    out.backward(g.to(out.dtype))
    return [out.detach(), x.grad] + [p.grad for p in block.parameters()], graph_nodes(out)


# ------------------------------------------------------------------------------------ one block, bf16 loop


@needs_native_bf16
@pytest.mark.parametrize("layer_scale", [1.0, None], ids=["gamma1", "gamma-random"])
@pytest.mark.parametrize(
    "shape, dtype",
    [((7, 24, 10, 10), torch.float32), ((3, 40, 10, 10), BF16)],  # 700 rows: 256+256+188; 300: 256+44
    ids=["fp32-in-700-rows", "bf16-in-300-rows"],  # bf16 in: a stage's first block, after autocast's conv
)
def test_chunked_block_bf16_loop_matches_autocast_in_output_and_every_gradient(
    layer_scale: float | None, shape: tuple[int, ...], dtype: torch.dtype, small_chunks: None
) -> None:
    plain = trained_like(Block(shape[1], layer_scale_init_value=1.0), layer_scale)
    ours = set_chunked_mlp(copy.deepcopy(plain), True)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last).to(dtype)
    g = torch.randn(shape)
    with torch.autocast("cpu", dtype=BF16):
        assert chunked_mlp.chunked_path(x, grad=True) == "bf16"
    exact, _ = out_and_grads(copy.deepcopy(plain).double(), x.double(), g.double(), amp=False)
    ref, _ = out_and_grads(plain, x, g, amp=True)
    got, nodes = out_and_grads(ours, x, g, amp=True)
    assert "_ChannelMLPBf16Backward" in nodes  # the bf16 loop ran, not the reference ops
    assert got[0].dtype == torch.float32  # the residual stream stays fp32, as autocast's
    names = ["output", "input"] + [n for n, _ in plain.named_parameters()]
    for name, o, a, e in zip(names, got, ref, exact, strict=True):
        assert_bf16_close(o, a, e.to(a.dtype), name)


@needs_native_bf16
@pytest.mark.parametrize("layer_scale", [1.0, None], ids=["gamma1", "gamma-random"])
def test_chunked_block_bf16_inference_matches_autocast(layer_scale: float | None, small_chunks: None) -> None:
    plain = trained_like(Block(24, drop_path=0.5, layer_scale_init_value=1.0), layer_scale)
    ours = set_chunked_mlp(copy.deepcopy(plain), True)
    x = torch.randn(7, 24, 10, 10).contiguous(memory_format=torch.channels_last)
    exact = copy.deepcopy(plain).double().eval()(x.double())
    for block in (plain, ours):
        block.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        assert chunked_mlp.chunked_path(x, grad=False) == "bf16"
        ref, got = plain(x), ours(x)
    assert_bf16_close(got, ref, exact, "eval output")
    # train mode without grad: the branch alone, then stochastic depth with the same random draws
    outs = []
    for block, amp in ((copy.deepcopy(plain).double(), False), (plain, True), (ours, True)):
        block.train()
        torch.manual_seed(3)
        with torch.no_grad(), torch.autocast("cpu", dtype=BF16, enabled=amp):
            outs.append(block(x.double() if not amp else x))
    exact, ref, got = outs
    assert_bf16_close(got, ref, exact, "train-mode output")


# ----------------------------------------------------------------------------- fuse_for_inference(bf16)


@needs_native_bf16
def test_fused_bf16_model_gives_the_fp32_top1_and_float32_logits() -> None:
    model = trained_like(build_model("convnext_atto", num_classes=100, chunked_mlp=False)).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_for_inference(model, dtype=BF16)
    assert fused.compute_dtype == BF16 and isinstance(fused, type(model))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # the input model untouched
    x = torch.randn(12, 3, 64, 64)
    with torch.no_grad():
        fp32 = model(x)
        exact = copy.deepcopy(model).double()(x.double())
        with torch.autocast("cpu", dtype=BF16):
            autocast = model(x)
        got = fused(x)  # float32 in, no autocast around it: it runs its own
        one = fused(x[:1].contiguous(memory_format=torch.channels_last))  # batch 1: the bf16 blocks too
    assert got.dtype == torch.float32 and one.dtype == torch.float32  # what callers (softmax, argmax) expect
    assert_bf16_close(got, autocast.float(), exact.float(), "logits")
    assert (got.argmax(1) == fp32.argmax(1)).float().mean() >= 0.9
    assert rel(one, got[:1]) <= 2e-2
    assert any("bf16" in getattr(m, "_prepared", {}) for m in fused.modules())  # weights cast once, kept


@needs_native_bf16
def test_fused_bf16_backbone_returns_float32_feature_maps() -> None:
    model = trained_like(build_model("convnext_atto", features_only=True)).eval()
    with torch.no_grad():
        feats = fuse_for_inference(model, dtype=BF16)(torch.randn(2, 3, 64, 64))
        ref = model(torch.randn(2, 3, 64, 64))
    assert [f.shape for f in feats] == [f.shape for f in ref]
    assert all(f.dtype == torch.float32 for f in feats)


@pytest.mark.parametrize("dtype", [None, BF16], ids=["fp32", "bf16"])
def test_a_model_fused_under_inference_mode_runs(dtype: torch.dtype | None) -> None:
    """``convnext benchmark`` fuses inside ``torch.inference_mode``: the copy's parameters are inference
    tensors, which have no version counter for the kept weights' key."""
    model = trained_like(build_model("convnext_atto", num_classes=10), layer_scale=None).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        fused = fuse_for_inference(model, dtype=dtype)
        assert all(p.is_inference() for p in fused.parameters())
        got, ref = fused(x), model(x)
    tol = 2e-2 if fused.compute_dtype == BF16 else 1e-5
    assert got.dtype == torch.float32 and rel(got, ref) <= tol


# -------------------------------------------------------------------------- CPUs without native bf16


@pytest.fixture
def no_native_bf16(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This CPU as one without AVX512-BF16 or AMX, as a user emulates it: ONEDNN_MAX_CPU_ISA capped below
    AVX512_CORE_BF16 (which ``models.cpu.cpu_flags`` honours); cached detections are re-read on both sides."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    cpu.cpu_flags.cache_clear()
    chunked_mlp.native_bf16.cache_clear()
    yield
    monkeypatch.undo()
    cpu.cpu_flags.cache_clear()
    chunked_mlp.native_bf16.cache_clear()


def test_native_bf16_detection_reads_the_flags() -> None:
    assert not cpu.cpu_has_native_bf16(frozenset({"avx2", "avx512f", "avx512_vnni"}))
    assert cpu.cpu_has_native_bf16(frozenset({"avx512f", "avx512_bf16"}))
    assert cpu.cpu_has_native_bf16(frozenset({"amx_tile", "amx_bf16"}))


def test_without_native_bf16_the_fast_blocks_compute_in_fp32(no_native_bf16: None) -> None:
    assert not chunked_mlp.native_bf16()
    big = torch.empty(8, 96, 56, 56)
    with torch.autocast("cpu", dtype=BF16):
        assert chunked_mlp.bf16_as_fp32()
        assert chunked_mlp.chunked_path(big, grad=True) == "fp32"
    assert not chunked_mlp.bf16_as_fp32()  # outside autocast there is nothing to fall back from
    block = set_chunked_mlp(trained_like(Block(24, layer_scale_init_value=1.0)), True)
    x = torch.randn(2, 24, 10, 10)
    g = torch.randn_like(x)
    fp32, _ = out_and_grads(block, x, g, amp=False)
    got, nodes = out_and_grads(block, x, g, amp=True)
    assert "_ChannelMLPBf16Backward" not in nodes
    for a, b in zip(got, fp32, strict=True):
        assert a.dtype == b.dtype == torch.float32
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)  # fp32, not bf16 rounding (~4e-3)
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):  # a stage's first block gets bf16: widened
        assert block(x.to(BF16)).dtype == torch.float32
    model = build_model("convnext_atto", num_classes=10).eval()
    fused = fuse_for_inference(model, dtype=BF16)
    assert fused.compute_dtype == torch.float32
    with torch.no_grad():
        assert torch.allclose(fused(x := torch.randn(2, 3, 64, 64)), model(x), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------ a training step, whole model


@needs_native_bf16
def test_training_step_under_bf16_autocast_matches_the_plain_model(small_chunks: None) -> None:
    model = trained_like(build_model("convnext_atto", num_classes=10, drop_path_rate=0.1), None).train()
    assert chunked_mlp.ChunkedBlock in {type(m) for m in model.modules()}
    x, y = torch.randn(3, 3, 64, 64), torch.randint(0, 10, (3,))  # stage 1: 768 rows, 3 chunks

    def step(m: nn.Module, amp: bool, dtype: torch.dtype = torch.float32) -> tuple[Tensor, list[Tensor]]:
        m.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same stochastic-depth draws
        with torch.autocast("cpu", dtype=BF16, enabled=amp):
            logits = m(x.to(dtype))
            loss = F.cross_entropy(logits, y)
        if amp:
            assert ("_ChannelMLPBf16Backward" in graph_nodes(loss)) == isinstance(
                m.stages[0][0], chunked_mlp.ChunkedBlock
            )
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in m.parameters()]

    exact_loss, exact = step(copy.deepcopy(model).double(), amp=False, dtype=torch.float64)
    loss, grads = step(model, amp=True)
    ref_loss, ref = step(set_chunked_mlp(copy.deepcopy(model), False), amp=True)
    assert torch.isfinite(loss) and abs(loss.item() - exact_loss.item()) <= 2e-2 * exact_loss.item()
    assert abs(loss.item() - ref_loss.item()) <= 1e-2 * ref_loss.item()
    names = [n for n, _ in model.named_parameters()]
    for name, o, a, e in zip(names, grads, ref, exact, strict=True):
        assert torch.isfinite(o).all(), name
        assert_bf16_close(o, a, e.float(), name)
    torch.optim.SGD(model.parameters(), lr=0.1).step()  # the step itself, and the model still runs
    with torch.autocast("cpu", dtype=BF16):
        assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_benchmark_says_the_blocks_run_their_bf16_loop_under_amp(mode: str) -> None:
    from convnext.bench import CHUNKED_NOTE, SMALL_NOTE
    from convnext.bench.models import run_benchmark

    report = run_benchmark(
        "convnext_atto", batch_size=2, img_size=32, mode=mode, amp="bf16", repeats=1, latency=False
    )
    # Any size takes the bf16 loop where bf16 is native; elsewhere the fp32 rule (too small to chunk).
    note = CHUNKED_NOTE if chunked_mlp.native_bf16() else SMALL_NOTE
    assert report["results"][0]["note"].startswith(note)


@needs_native_bf16
def test_predict_amp_bf16_runs_the_fused_bf16_model(imagenet_sample, tmp_path, capsys) -> None:
    """``--amp bf16`` on a CPU runs ``fuse_for_inference``'s bf16 copy (weights cast once: 1.12x at batch 1)
    rather than autocast around the fp32 model: predict's probabilities are the fused model's. Its layer
    scale (not 1) is folded into the projection before the cast, so it rounds apart from autocast and the
    two are told apart."""
    import json

    from convnext import load_for_inference
    from convnext.cli.main import main
    from convnext.data import build_eval_transform, load_image

    torch.manual_seed(0)
    model = trained_like(build_model("convnext_atto", num_classes=10), layer_scale=None).eval()
    path = tmp_path / "w.pth"
    torch.save(model.state_dict(), path)
    files = [str(p) for p in sorted(imagenet_sample.glob("*/*"))[:4]]
    argv = ["predict", *files, "--weights", str(path), "--model", "convnext_atto", "--img-size", "64"]
    assert main([*argv, "--amp", "bf16", "--json", "--topk", "3", "--device", "cpu"]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    tf = build_eval_transform(load_for_inference(str(path), "convnext_atto", img_size=64).data)
    x = torch.stack([tf(load_image(f)) for f in files])
    with torch.inference_mode(), torch.autocast("cpu", dtype=BF16):
        fused = fuse_for_inference(model, dtype=BF16)(x).float().softmax(1)
        autocast = model(x).float().softmax(1)
    assert (fused - autocast).abs().max() > 1e-4  # the two differ: the check below tells them apart
    for obj, p in zip(got, fused, strict=True):
        assert [t["prob"] for t in obj["top"]] == pytest.approx(
            p[[t["index"] for t in obj["top"]]].tolist(), abs=2e-6
        )


def test_benchmark_torch_bf16_without_native_bf16_runs_what_it_reports(tmp_path) -> None:
    """``benchmark --backend torch-bf16`` on a CPU without native bf16 (any CPU, capped to AVX2 as oneDNN
    is by ONEDNN_MAX_CPU_ISA) says fp32 ran, and fp32 is what ran: its logits are the fp32 model's, not those
    of a model half in emulated bf16 (the stem, downsampling and head under autocast: ~4e-3 off)."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    out = tmp_path / "b.json"
    argv = ["benchmark", "--backend", "torch-bf16", "--model", "convnext_atto", "--img-size", "32"]
    argv += ["--batch-size", "2", "--repeats", "1", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "convnext", *argv], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert not report["cpu_features"]["BF16"] and not report["cpu_features"]["AMX"]
    torch_, bf16 = report["results"]
    assert bf16["precision"] == "fp32 (fused; this CPU has no native bf16)"
    assert bf16["max_rel_diff_vs_torch"] <= 1e-5 and torch_["max_rel_diff_vs_torch"] <= 1e-5
    assert "torch-bf16 ran our fp32 model" in " ".join(report["notes"])
    assert "fp32 (fused; this CPU has no native bf16)" in proc.stdout  # the table says it too


# ------------------------------------------------------------------- training: bf16 where the CPU lacks it


@pytest.mark.parametrize(
    ("flags", "device", "emulated", "amp"),
    [
        (frozenset({"avx2", "avx512f", "avx512_vnni"}), "cpu", False, "none"),  # no native bf16: fp32
        (frozenset({"avx2", "avx512f", "avx512_vnni"}), "cpu", True, "bf16"),  # train.emulated_bf16=true
        (frozenset({"avx512f", "avx512_bf16"}), "cpu", False, "bf16"),
        (frozenset({"amx_tile", "amx_bf16"}), "cpu", False, "bf16"),
        (frozenset({"avx2"}), "cuda", False, "bf16"),  # the host CPU does not matter on a GPU
    ],
)
def test_recipe_bf16_trains_in_fp32_on_a_cpu_without_native_bf16(
    flags: frozenset[str], device: str, emulated: bool, amp: str
) -> None:
    from convnext.engine.config import load_config
    from convnext.engine.preflight import train_amp

    cfg = load_config("quickstart_digits", ["train.amp=bf16", f"train.emulated_bf16={emulated}"])
    got, why = train_amp(cfg, torch.device(device), flags)
    assert got == amp
    assert (why is not None) == (amp == "none")
    if why:
        assert "\n" not in why and "runs in fp32 on this CPU" in why and "train.emulated_bf16=true" in why


def test_train_and_dry_run_say_fp32_without_native_bf16(
    no_native_bf16: None,
    tmp_path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run's process and its dry run, on a CPU capped below AVX512-BF16 (any host): fp32, one line."""
    from convnext import messages
    from convnext.cli.main import main
    from convnext.engine.config import load_config
    from convnext.engine.train import start_process

    monkeypatch.setattr(messages, "_said", set())  # notes are said once per process
    args = ["finetune_folder", f"data.root={tmp_path}", "train.device=cpu", "train.batch_size=2"]
    args.append(f"run.dir={tmp_path / 'run'}")
    assert main(["train", "--config", *args, "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert err.count("train.amp=bf16 runs in fp32 on this CPU") == 1 and "fp32 on cpu" in err
    cfg = load_config(args[0], args[1:])
    assert cfg.train.amp == "bf16" and start_process(cfg).amp_dtype is None
    assert "train.amp=bf16 runs in fp32" in capsys.readouterr().err
    cfg = load_config(args[0], [*args[1:], "train.emulated_bf16=true"])
    with caplog.at_level("INFO", logger="convnext"):  # a library call: the note is a log record
        assert start_process(cfg).amp_dtype == BF16  # asked for: bf16, with the emulation note
    assert "bf16 is emulated and slower than fp32" in caplog.text


def test_native_bf16_cpu_keeps_the_recipes_bf16(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """The other branch on any host: the ISA reader says AVX512-BF16 (only the decision is checked here)."""
    from convnext.engine.config import load_config
    from convnext.engine.train import start_process

    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    cfg = load_config("finetune_folder", [f"data.root={tmp_path}", "train.device=cpu"])
    assert start_process(cfg).amp_dtype == BF16
