"""The command line as a whole: every verb is there, overrides go anywhere, fine-tuning heads start small."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import convnext
from convnext.cli.main import VERBS, build_parser, main


def test_every_verb_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for verb in VERBS:
        with pytest.raises(SystemExit) as e:
            main([verb, "--help"])
        assert e.value.code == 0
    assert set(VERBS) <= set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def test_overrides_may_stand_anywhere(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--config", "configs/quickstart_digits.yaml", "epochs=2", "--dry-run", "optim.lr=0.1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "epochs: 2" in out and "lr: 0.1" in out


def test_unknown_flag_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", "configs/quickstart_digits.yaml", "--bogus"])
    assert e.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_models_lists_released_weights(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--weights", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    tags = {r["tag"]: r for r in rows}
    assert tags["convnext_tiny.fb_in1k"]["top1"] == 82.1
    assert tags["convnext_base.fb_in22k"]["num_classes"] == 21841


def test_finetune_head_is_scaled_once(caplog: pytest.LogCaptureFixture) -> None:
    """A fresh classifier keeps head_init_scale (official fine-tuning); a loaded one is untouched."""
    src = convnext.create_model("convnext_atto", num_classes=5).state_dict()
    with caplog.at_level(logging.WARNING):
        fresh = convnext.create_model("convnext_atto", pretrained=src, num_classes=3, head_init_scale=1e-3)
    assert "classifier starts fresh" in caplog.text
    assert 0.5e-5 < fresh.head.weight.std().item() < 4e-5  # trunc_normal(0.02) x 1e-3
    kept = convnext.create_model("convnext_atto", pretrained=src, num_classes=5, head_init_scale=1e-3)
    assert torch.equal(kept.head.weight, src["head.weight"])


def test_engine_switches_train_together(tmp_path: Path) -> None:
    """bf16 autocast on CPU, channels_last, gradient accumulation, clipping and EMA in one short real run."""
    argv = [
        "train",
        "--config",
        "configs/quickstart_digits.yaml",
        f"run.dir={tmp_path}",
        "epochs=1",
        "train.amp=bf16",
        "train.channels_last=true",
        "train.accum_steps=2",
        "optim.clip_grad=1.0",
        "ema.enabled=true",
        "ema.decay=0.9",
        "train.progress=false",
        "model.options={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}",
        "run.export_samples=0",
    ]
    assert main(argv) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record["step"] == 1437 // 64  # 64 = 32 per micro-batch x 2 accumulation steps
    assert record["val_top1"] > 50 and record["ema_val_top1"] > 20


# ------------------------------------------------------------------------------- convnext models: the table
def _shipped_sizes() -> dict:
    from convnext.models.profile import SIZES_PATH

    return json.loads(SIZES_PATH.read_text())


def test_sizes_table_lists_every_variant_as_the_counter_measures_it() -> None:
    """The shipped table has every architecture, and the small ones equal a fresh count (the slow test below
    counts them all); `python -m convnext.models.profile` regenerates it after a model change."""
    from convnext.models import VARIANTS
    from convnext.models.profile import model_stats

    table = _shipped_sizes()["models"]
    assert list(table) == list(VARIANTS)
    for name in ("convnext_atto", "convnextv2_atto", "convnext_isotropic_small"):
        fresh = model_stats(name)
        row = table[name]
        assert (row["params"], row["macs"]) == (round(fresh["params_m"] * 1e6), round(fresh["gflops"] * 1e9))
        assert (row["family"], row["input_size"]) == (fresh["family"], fresh["input_size"])


@pytest.mark.slow
def test_sizes_table_equals_a_fresh_count_of_every_variant() -> None:
    from convnext.models.profile import sizes_table

    assert sizes_table() == _shipped_sizes()


def test_models_reads_the_table_and_builds_no_model(tmp_path: Path) -> None:
    """`convnext models` answers from the shipped table: torch is never imported (it built and counted all
    twenty models on each call); nor by `--weights`, the registry being plain data (weights/ imports its
    loader on first use); --img-size, a size the table does not hold, still measures."""
    code = (
        "import sys\n"
        "from convnext.cli.main import main\n"
        "rc = main(['models', '--json'])\n"
        "rc += main(['models', 'convnext_t*'])\n"
        "rc += main(['models', '--weights', '--family', 'v2'])\n"
        "assert 'torch' not in sys.modules, 'convnext models imported torch'\n"
        "sys.exit(rc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    table = _shipped_sizes()["models"]
    assert [r["model"] for r in rows] == list(table)
    tiny = next(r for r in rows if r["model"] == "convnext_tiny")
    assert (round(tiny["params_m"], 1), round(tiny["gflops"], 1), tiny["input_size"]) == (28.6, 4.5, 224)
    assert "convnext_tiny " in out.stdout and "convnext_isotropic_small" in out.stdout
    assert "convnextv2_atto.fcmae_ft_in1k" in out.stdout and "convnext_tiny.fb_in1k" not in out.stdout


def test_models_at_another_size_measures(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "convnext_atto", "--img-size", "112", "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    table = _shipped_sizes()["models"]["convnext_atto"]
    assert row["input_size"] == 112 and row["params_m"] * 1e6 == table["params"]
    assert abs(row["gflops"] * 1e9 - table["macs"] / 4) / table["macs"] < 0.02  # a quarter of the pixels
    assert main(["models", "--family", "v2", "--json"]) == 0
    assert {json.loads(r)["family"] for r in capsys.readouterr().out.splitlines()} == {"v2"}


def test_package_data_ships_the_sizes_table() -> None:
    import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(fnmatch.fnmatch("models/sizes.json", p) for p in patterns["convnext"])
