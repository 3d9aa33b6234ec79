"""The command line as a whole: every verb is there, overrides go anywhere, fine-tuning heads start small."""

from __future__ import annotations

import json
import logging

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
