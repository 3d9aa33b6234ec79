"""Recipes load, inherit and override; every bad config is one sentence naming the key, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from convnext.cli.main import main
from convnext.engine.config import config_from_dict, load_config, to_dict
from convnext.errors import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("_"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_loads_and_round_trips(recipe: Path, tmp_path: Path) -> None:
    cfg = load_config(recipe, [f"data.root={tmp_path}"])
    assert config_from_dict(to_dict(cfg)) == cfg  # what the checkpoint stores is the whole recipe


def test_in1k_recipes_are_the_papers() -> None:
    for size, dp in {"tiny": 0.1, "small": 0.4, "base": 0.5, "large": 0.5}.items():
        cfg = load_config(CONFIGS / f"convnext_{size}_in1k.yaml", check_paths=False)
        assert cfg.model.name == f"convnext_{size}" and cfg.model.drop_path_rate == dp
        assert (cfg.epochs, cfg.optim.lr, cfg.optim.lr_base_batch, cfg.optim.weight_decay) == (
            300,
            4e-3,
            4096,
            0.05,
        )
        assert (cfg.schedule.warmup_epochs, cfg.schedule.min_lr) == (20, 1e-6)
        assert cfg.train.batch_size * 8 * cfg.train.accum_steps == 4096  # on one 8-GPU machine
        assert (cfg.ema.enabled, cfg.ema.decay, cfg.train.label_smoothing) == (True, 0.9999, 0.1)
        d = cfg.data
        assert (d.mixup, d.cutmix, d.randaugment, d.reprob) == (0.8, 1.0, "rand-m9-mstd0.5-inc1", 0.25)
    ft = load_config(CONFIGS / "convnext_base_in22ft1k_384.yaml", check_paths=False)
    assert (ft.optim.lr, ft.optim.lr_base_batch, ft.optim.layer_decay, ft.optim.weight_decay) == (
        5e-5,
        512,
        0.8,
        1e-8,
    )
    assert (ft.epochs, ft.schedule.warmup_epochs, ft.model.head_init_scale, ft.data.img_size) == (
        30,
        0,
        0.001,
        384,
    )


def test_overrides_are_yaml_typed(tmp_path: Path) -> None:
    cfg = load_config(
        CONFIGS / "convnext_tiny_in1k.yaml",
        [
            f"data.root={tmp_path}",
            "optim.lr=1e-3",
            "model.name=convnext_small",
            "epochs=30",
            "optim.clip_grad=null",
            "model.options={depths: [1, 1, 3, 1]}",
        ],
    )
    assert (cfg.optim.lr, cfg.model.name, cfg.epochs) == (1e-3, "convnext_small", 30)
    assert cfg.optim.clip_grad is None
    assert cfg.model.options == {"depths": [1, 1, 3, 1]}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=0.1", "unknown config key optim.lrr; did you mean optim.lr?"),
        ("trian.batch_size=8", "unknown config key trian; did you mean train?"),
        ("train.batch_size=abc", "config key train.batch_size must be an integer, got 'abc'"),
        ("ema.enabled=maybe", "config key ema.enabled must be true or false, got 'maybe'"),
        ("optim.lr=-0.1", "config key optim.lr must be >= 0, got -0.1"),
        ("train.batch_size=0", "config key train.batch_size must be at least 1, got 0"),
        ("data.root=/no/such/folder", "config key data.root: folder /no/such/folder does not exist"),
        ("model.name=convnext_tinny", "unknown model 'convnext_tinny'; did you mean convnext_tiny?"),
        ("epochs=10", "config key schedule.warmup_epochs must be in [0, epochs=10], got 20.0"),
    ],
)
def test_bad_config_is_one_sentence(override: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        load_config(CONFIGS / "convnext_tiny_in1k.yaml", [f"data.root={tmp_path}", override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_cli_reports_bad_config_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    code = main(
        ["train", "--config", str(CONFIGS / "quickstart_digits.yaml"), f"run.dir={run_dir}", "optim.lrr=1"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == "convnext train: error: unknown config key optim.lrr; did you mean optim.lr?"
    assert not run_dir.exists()  # nothing was written


def test_inherit_merges_sections(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(
        "epochs: 7\noptim: {lr: 0.5, weight_decay: 0.1}\n"
        "schedule: {warmup_epochs: 1}\ndata: {dataset: digits}\n"
    )
    child = tmp_path / "child.yaml"
    child.write_text("inherit: base.yaml\noptim: {lr: 0.25}\n")
    cfg = load_config(child)
    assert (cfg.epochs, cfg.optim.lr, cfg.optim.weight_decay) == (7, 0.25, 0.1)


def test_dry_run_prints_resolved_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "-c", str(CONFIGS / "quickstart_digits.yaml"), "--dry-run", "epochs=3"]) == 0
    assert "epochs: 3" in capsys.readouterr().out
