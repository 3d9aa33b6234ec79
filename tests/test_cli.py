"""The command line as a whole: every verb is there, overrides go anywhere, fine-tuning heads start small."""

from __future__ import annotations

import json
import logging
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
