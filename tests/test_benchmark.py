"""The benchmark runs and compares like with like; the fused inference model computes the plain function.

No timing is asserted here: speed figures live in BENCHMARKS.md, measured interleaved. The deployment
backends (--backend) are checked for running the same weights and reporting what each really ran.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from convnext import create_model
from convnext.bench import (
    build_peer,
    format_backend_report,
    format_report,
    run_backend_benchmark,
    run_benchmark,
    to_peer_state_dict,
)
from convnext.cli.main import main
from convnext.errors import UserError
from convnext.models import ConvNeXtIsotropic
from convnext.models.fuse import FusedBlock, fuse_for_inference


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Layer scales and biases far from their init, so folding them is really tested."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("gamma", "bias")):
                p.uniform_(-0.5, 0.5)
    return model


def _small(name: str) -> torch.nn.Module:
    if name == "isotropic":  # a 2-block isotropic model with layer scale: same code path, a tenth of the time
        return ConvNeXtIsotropic(depth=2, dim=64, layer_scale_init_value=1e-6)
    return create_model(name)


@pytest.mark.parametrize("name", ["convnext_atto", "isotropic", "convnextv2_atto"])
def test_fused_model_equals_plain_model(name: str) -> None:
    torch.manual_seed(0)
    model = _randomise(_small(name)).eval()
    fused = fuse_for_inference(model, chunk_rows=100)  # chunks that do not divide the rows: ragged last chunk
    assert any(isinstance(m, FusedBlock) for m in fused.modules()) == (name != "convnextv2_atto")
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        ref = model(x)
        out = fused(x)
        feats = fused.forward_features(x)
    assert (out - ref).abs().max() <= 1e-4
    assert feats.shape == model.forward_features(x).shape
    assert next(model.parameters()).requires_grad  # the plain model is left as it was
    assert not any(isinstance(m, FusedBlock) for m in model.modules())


def test_fused_model_equals_plain_at_batch_one_and_channels_last_input() -> None:
    torch.manual_seed(0)
    model = _randomise(create_model("convnext_atto")).eval()
    fused = fuse_for_inference(model)
    x = torch.randn(1, 3, 96, 80).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert (fused(x) - model(x)).abs().max() <= 1e-4


PEER_CASES = [("timm", "convnext_atto"), ("timm", "convnextv2_atto")]  # torchvision: in the verb test


@pytest.mark.parametrize("peer,name", PEER_CASES)
def test_our_weights_give_the_peers_our_logits(peer: str, name: str) -> None:
    pytest.importorskip(peer)
    torch.manual_seed(0)
    ours = _randomise(create_model(name)).eval()
    theirs = build_peer(peer, name, 1000)
    theirs.load_state_dict(to_peer_state_dict(ours.state_dict(), peer, theirs), strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (theirs.eval()(x) - ours(x)).abs().max() <= 1e-4


def test_benchmark_verb_compares_with_timm_and_torchvision(capsys: pytest.CaptureFixture[str]) -> None:
    from convnext.bench import FUSED_NOTE

    pytest.importorskip("timm")
    args = ["benchmark", "--model", "convnext_tiny", "--batch-size", "1", "--img-size", "32"]
    args += ["--repeats", "1"]
    assert main([*args, "--compare", "timm,torchvision", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in report["results"]] == ["ours", "timm", "torchvision"]
    ours, timm, tv = report["results"]
    assert ours["images_per_s"] > 0 and ours["latency_ms"] > 0 and timm["ours_speedup"] > 0
    assert "ours_latency_speedup" in tv and ours["note"].startswith(FUSED_NOTE)  # the fused model was timed
    assert all(r["max_abs_diff_vs_ours"] <= 1e-4 for r in report["results"])  # the same function was timed
    assert report["matmul_peak_gflops"] > 0 and ours["fraction_of_matmul_peak"] > 0
    assert report["params_m"] == pytest.approx(28.6, abs=0.05) and ours["peak_memory_mb"] >= 0
    assert report["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")  # --device auto


def test_benchmark_json_file_keeps_the_table(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "bench.json"
    args = ["benchmark", "--model", "convnext_atto", "--batch-size", "1", "--img-size", "32"]
    args += ["--repeats", "1"]
    assert main([*args, "--device", "cpu", "--json", str(dst)]) == 0
    assert "images/s" in capsys.readouterr().out
    assert json.loads(dst.read_text())["results"][0]["name"] == "ours"


@pytest.mark.slow  # CI runs another variant of this guarantee (suite under 10 minutes)
def test_benchmark_train_mode_table() -> None:
    from convnext.bench import CHUNKED_NOTE, SMALL_NOTE

    # 6 x 32 x 32 = 6144 stage-1 rows: the size from which the fast blocks chunk a training step on CPU
    report = run_benchmark(
        "convnext_atto", batch_size=6, img_size=128, mode="train", repeats=1, channels_last=True
    )
    table = format_report(report)
    assert "images/s" in table and "AdamW" in table and "forward + backward" in table
    assert report["results"][0]["latency_ms"] is None
    assert report["results"][0]["note"].startswith(CHUNKED_NOTE)  # timed as ours trains on CPU: chunked
    small = run_benchmark("convnext_atto", batch_size=2, img_size=32, mode="train", repeats=1)
    assert small["results"][0]["note"].startswith(SMALL_NOTE)  # and what the blocks do at this size
    plain = run_benchmark("convnext_atto", batch_size=2, img_size=32, mode="train", repeats=1, fuse=False)
    assert plain["results"][0]["note"].startswith("plain model")


@pytest.mark.slow  # CI runs another variant of this guarantee (suite under 10 minutes)
def test_a_peer_without_the_architecture_is_left_out_with_a_note(capsys) -> None:
    pytest.importorskip("timm")
    args = [
        "benchmark",
        "--model",
        "convnext_atto",
        "--batch-size",
        "1",
        "--img-size",
        "32",
        "--repeats",
        "1",
    ]
    assert main([*args, "--compare", "timm,torchvision", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert re.search(r"^timm ", table, re.M) and not re.search(r"^torchvision ", table, re.M)
    assert "note: torchvision has no convnext_atto; it ships only convnext_tiny" in table
    report = run_benchmark("convnext_atto", batch_size=1, img_size=32, repeats=1, compare=("torchvision",))
    assert [r["name"] for r in report["results"]] == ["ours"]
    assert report["notes"] == [
        "torchvision has no convnext_atto; it ships only convnext_tiny, convnext_small, convnext_base, "
        "convnext_large: left out of the comparison"
    ]


# Per-round times where the median of per-round ratios (0.91: ours slower) and the ratio of the medians
# (1.09: ours faster, as the medians printed beside it say) fall on either side of 1.
OURS_S, PEER_S = [1.0, 1.1, 3.0], [2.0, 1.0, 1.2]


def test_speedups_are_ratios_of_the_medians_printed_beside_them() -> None:
    from convnext.bench import backends, models
    from convnext.bench.timing import Rounds

    rounds = Rounds({"ours": OURS_S, "timm": PEER_S}, {"ours": OURS_S, "timm": PEER_S})
    contestants = [models.Contestant(n, torch.nn.Identity(), lambda: None) for n in ("ours", "timm")]
    both = {"ours": 0.0, "timm": 0.0}
    ours, timm = models._results(contestants, rounds, both, both, 4, 1e9, 1e12)
    assert timm["ours_speedup"] == pytest.approx(ours["images_per_s"] / timm["images_per_s"]) == 1.2 / 1.1
    assert timm["ours_latency_speedup"] == pytest.approx(timm["latency_ms"] / ours["latency_ms"])
    assert timm["ours_speedup_range"] == pytest.approx((0.4, 2.0))  # per round: 2.0, 0.91, 0.4

    rounds = Rounds({"torch": PEER_S, "onnxruntime": OURS_S}, {"torch": PEER_S, "onnxruntime": OURS_S})
    runners = {"torch": torch.nn.Identity(), "onnxruntime": torch.nn.Identity()}
    for r in runners.values():
        r.precision = "fp32"
    torch_, ort = backends._results(runners, rounds, {"torch": 0.0, "onnxruntime": 0.0}, 4, True)
    assert ort["speedup_vs_torch"] == pytest.approx(ort["images_per_s"] / torch_["images_per_s"])
    assert ort["speedup_vs_torch"] > 1  # torch's median time 1.2 s, onnxruntime's 1.1 s
    assert ort["latency_speedup_vs_torch"] == pytest.approx(torch_["latency_ms"] / ort["latency_ms"])
    assert ort["speedup_vs_torch_range"] == pytest.approx((0.4, 2.0))


def test_the_peak_gemm_is_sized_to_take_about_a_second_where_its_dtype_is_slow() -> None:
    """bf16 on a CPU without AVX512-BF16/AMX is emulated: a fixed 2048 GEMM took ~55 s a round there, and
    `benchmark --amp bf16` (and two tests of it) spent minutes timing the peak. The side follows one probe's
    rate; a native dtype keeps 2048."""
    from convnext.bench.timing import gemm_side, matmul_peak_step

    assert gemm_side(100e9) == 2048  # a native fp32 rate: 2 * 2048^3 is ~0.17 s
    assert gemm_side(0.31e9) == 512  # emulated bf16 as measured on a 2-core AVX2 EPYC
    assert gemm_side(1.0) == 256  # never below the probe's size
    _, flops = matmul_peak_step(torch.device("cpu"), torch.float32)
    side = round((flops / 2) ** (1 / 3))
    assert 256 <= side <= 2048 and side % 256 == 0


def test_benchmark_errors_are_one_clear_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserError, match="unknown peer"):
        run_benchmark("convnext_atto", batch_size=1, img_size=32, repeats=1, compare=("keras",))
    assert main(["benchmark", "--model", "convnext_nope", "--repeats", "1"]) == 2
    assert "unknown model 'convnext_nope'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            run_benchmark("convnext_atto", device="cuda")


def _digits_checkpoint(path) -> str:
    """A training checkpoint of the quickstart's model on the digits (random weights, layer scale 1)."""
    from convnext.engine.checkpoint import train_state
    from convnext.models import build_model
    from convnext.recipe import TrainConfig, to_dict

    cfg = TrainConfig()
    cfg.model.name, cfg.model.layer_scale_init_value = "convnext_atto", 1.0
    cfg.model.options = {"depths": [1, 1, 2, 1], "dims": [32, 64, 128, 256]}
    cfg.data.dataset, cfg.data.img_size, cfg.data.crop_pct = "digits", 32, 1.0
    model = build_model("convnext_atto", num_classes=10, layer_scale_init_value=1.0, **cfg.model.options)
    ckpt = train_state(
        arch="convnext_atto", model=model.state_dict(), epoch=1, step=1, config=to_dict(cfg),
        class_names=[str(i) for i in range(10)],
    )  # fmt: skip
    torch.save(ckpt, path)
    return str(path)


def test_backend_benchmark_times_the_same_weights_in_each_runtime(tmp_path, capsys) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    weights = _digits_checkpoint(tmp_path / "last.pth")
    args = ["benchmark", "--backend", "torch-bf16,openvino-int8", "--weights", weights]
    assert main([*args, "--batch-size", "4", "--repeats", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    torch_, bf16, int8 = report["results"]
    assert [r["backend"] for r in report["results"]] == ["torch", "torch-bf16", "openvino-int8"]
    from convnext.models.cpu import cpu_has_int8_dot, cpu_has_native_bf16

    assert torch_["precision"] == "fp32 (fused)"  # torch-bf16 is our fused bf16 model, as fast as ours gets
    assert bf16["precision"] == (
        "bf16 autocast (fused)" if cpu_has_native_bf16() else "fp32 (fused; this CPU has no native bf16)"
    )
    assert re.fullmatch(r"int8 \(other layers (bf16|fp32)\)", int8["precision"])  # what OpenVINO really ran
    assert torch_["max_rel_diff_vs_torch"] <= 1e-5 and bf16["max_rel_diff_vs_torch"] <= 0.05
    assert all(r["images_per_s"] > 0 and r["latency_ms"] > 0 and r["speedup_vs_torch"] > 0 for r in
               report["results"])  # fmt: skip
    assert report["img_size"] == 32 and report["model"] == "convnext_atto"
    assert set(report["cpu_features"]) == {"AVX2", "AVX-512", "VNNI", "BF16", "AMX"}  # yes or no each
    assert "openvino" in report["versions"]
    # The checkpoint's own training data, then what this CPU lacks (AVX2-only, AVX-512, AMX hosts alike)
    assert report["notes"][0] == "int8 calibrated on 300 images"
    lacks = report["notes"][1:]
    assert any(n.startswith("no VNNI/AMX") for n in lacks) == (not cpu_has_int8_dot())
    assert any(n.startswith("no native bf16") for n in lacks) == (not cpu_has_native_bf16())
    assert len(lacks) == (not cpu_has_int8_dot()) + (not cpu_has_native_bf16())
    table = format_backend_report(report)
    assert "ran as" in table and "CPU: AVX2" in table and "openvino-int8" in table


def test_backend_benchmark_errors_are_one_line(capsys) -> None:
    with pytest.raises(UserError, match="unknown backend 'tensorrt'"):
        run_backend_benchmark("convnext_atto", backends="torch,tensorrt")
    assert main(["benchmark", "--backend", "onnxruntime", "--compare", "timm"]) == 2
    assert "--backend times CPU inference as each backend runs it; drop --compare" in capsys.readouterr().err
    assert main(["benchmark", "--weights", "x.pth"]) == 2
    assert "--weights and --calibration go with --backend" in capsys.readouterr().err
    assert main(["benchmark", "--backend", "onnxruntime", "--device", "cuda"]) == 2  # auto and cpu pass
    assert capsys.readouterr().err.strip() == (
        "convnext benchmark: error: --backend times the CPU backends; drop --device cuda"
    )


def test_cli_backend_list_is_the_modules() -> None:
    from convnext import bench
    from convnext.cli import benchmark as cli

    assert cli.BACKENDS == bench.BACKENDS


def test_smallest_img_size_is_the_models_reduction() -> None:
    """A 16 px input fits the isotropic ConvNeXt (stride 16) and not a hierarchical one (stride 32)."""
    from convnext.bench.models import check_img_size

    check_img_size(16, "convnext_isotropic_small")
    with pytest.raises(UserError, match="--img-size 16 is below the 32 px convnext_atto needs"):
        check_img_size(16, "convnext_atto")
    with pytest.raises(UserError, match="below the 32 px"):
        run_backend_benchmark("convnext_atto", backends="torch", img_size=16, batch_size=1, repeats=1)
