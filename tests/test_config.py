"""Recipes load, inherit and override; every bad config is one sentence naming the key, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from convnext.cli.main import main
from convnext.engine.config import load_config
from convnext.errors import UserError
from convnext.recipe import config_from_dict, to_dict

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


@pytest.mark.parametrize("spelling", ["ImageFolder", "image_folder", "image-folder"])
def test_any_spelling_of_a_dataset_is_stored_as_its_name(spelling: str, tmp_path: Path) -> None:
    """The catalog accepts any case, '-' or '_'; the checks that follow (an image folder needs data.root)
    and the run's config.yaml compare the name, so the spelling is replaced by it, not passed on."""
    with pytest.raises(UserError, match="data.root is required for an image folder"):
        load_config(CONFIGS / "finetune_folder.yaml", [f"data.dataset={spelling}", "data.root=''"])
    cfg = load_config(CONFIGS / "finetune_folder.yaml", [f"data.dataset={spelling}", f"data.root={tmp_path}"])
    assert cfg.data.dataset == "imagefolder"


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


# ------------------------------------------------------------------- every key's range, every constraint
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # issue 14: values that passed --dry-run and crashed later
        (["data.std=[0,0,0]"], "config key data.std must be three numbers > 0"),
        (["data.scale=[1.0,0.1]"], "config key data.scale must be [min, max] with 0 < min <= max <= 1"),
        (["data.ratio=[0,0]"], "config key data.ratio must be [min, max] with 0 < min <= max"),
        (["data.hflip=7"], "config key data.hflip must be a probability in [0, 1], got 7.0"),
        (["data.val_fraction=1.5"], "config key data.val_fraction must be in (0, 1), got 1.5"),
        # the rest of the data section
        (["data.mean=[2,0,0]"], "config key data.mean must be three numbers in [0, 1]"),
        (["data.mean=[0.5,0.5]"], "config key data.mean must be a list of 3 numbers"),
        (["data.crop_pct=0"], "config key data.crop_pct must be in (0, 1]"),
        (["data.crop_mode=stretch"], "config key data.crop_mode must be center or squash"),
        (["data.max_pixels=-1"], "config key data.max_pixels must be >= 0"),
        (
            ["data.interpolation=lanczos"],
            "config key data.interpolation must be bicubic, bilinear or nearest",
        ),
        (["data.randaugment=rand-m99"], "config key data.randaugment: 'rand-m99' is out of range"),
        (["data.randaugment=rand-x1"], "config key data.randaugment: cannot read 'x1'"),
        (["data.reprob=1.5"], "config key data.reprob must be a probability in [0, 1]"),
        (["data.mixup=-1"], "config key data.mixup must be >= 0"),
        (["data.cutmix=-0.5"], "config key data.cutmix must be >= 0"),
        (["data.mixup_prob=2"], "config key data.mixup_prob must be a probability in [0, 1]"),
        (["data.mixup_switch_prob=-0.1"], "config key data.mixup_switch_prob must be a probability"),
        (["data.workers=-1"], "config key data.workers must be >= 0 (or auto)"),
        (["data.prefetch_factor=0"], "config key data.prefetch_factor must be at least 1"),
        (["data.img_size=16"], "config key data.img_size must be at least 32 for convnext_tiny"),
        (["data.dataset=imagenett"], "config key data.dataset: 'imagenett' is not one of"),
        (["data.class_list=/no/such/list.txt"], "config key data.class_list: '/no/such/list.txt' is not"),
        (["data.train_split=' '"], "config key data.train_split must name a split folder"),
        (["data.split_seed=-1"], "config key data.split_seed must be in [0, 2**63)"),
        (["model.num_classes=1", "data.mixup=0.8"], "MixUp/CutMix need at least 2 classes"),
        # numbers that are not numbers
        (["optim.lr=.inf"], "config key optim.lr must be a finite number"),
        (["optim.lr=.nan"], "config key optim.lr must be a finite number"),
        (["optim.momentum=1"], "config key optim.momentum must be in [0, 1)"),
        (["optim.layer_decay=0"], "config key optim.layer_decay must be in (0, 1]"),
        (["optim.betas=[0.9,1.0]"], "config key optim.betas must be two numbers in [0, 1)"),
        (["seed=-3"], "config key seed must be in [0, 2**63)"),
        # model
        (["model.layer_scale_init_value=-1"], "config key model.layer_scale_init_value must be >= 0"),
        (["model.head_init_scale=0"], "config key model.head_init_scale must be > 0"),
        (
            ["model.options={depth: 3}"],
            "config key model.options.depth: convnext_tiny (ConvNeXt) has no such",
        ),
        (["model.options={depths: [1,1,1]}"], "config key model.options.depths must be a list of 4 positive"),
        (["model.options={dims: [8,16,32,0]}"], "config key model.options.dims must be a list of 4 positive"),
        (["model.options={drop_path_rate: 0.3}"], "config key model.options.drop_path_rate: set model.drop"),
        (["model.options={features_only: true}"], "config key model.options.features_only cannot be set"),
        (["model.options={in_chans: 1}"], "config key model.options.in_chans cannot be set in a recipe"),
        (["model.options={1: 2}"], "config key model.options must have names as keys"),
        (["model.name=convnext_isotropic_small", "model.options={depths: [1,1,1,1]}"], "has no such option"),
        (["model.pretrained=convnext_tiny.fb_in1k", "model.name=convnext_small"], "are for convnext_tiny"),
        (["model.pretrained=/no/such/weights.pth"], "config key model.pretrained: /no/such/weights.pth does"),
        (["model.pretrained=convnext_tiny.fb_in2k"], "is neither a file nor a known weights tag"),
        # keys that contradict each other
        (["train.amp=fp16", "train.device=cpu"], "config key train.amp: fp16 needs a CUDA device"),
        (["ema.enabled=false"], "config key checkpoint.best_by: ema needs ema.enabled=true"),
        (["checkpoint.keep_last=-1"], "config key checkpoint.keep_last must be >= 0"),
        (["run.dir=' '"], "config key run.dir must name a folder"),
    ],
)
def test_every_value_is_checked(overrides: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        load_config(CONFIGS / "convnext_tiny_in1k.yaml", [f"data.root={tmp_path}", *overrides])
    assert message in str(e.value)
    assert "\n" not in str(e.value) and str(e.value).startswith("config key")


@pytest.mark.parametrize(
    "override", ["data.std=[0,0,0]", "data.scale=[1.0,0.1]", "data.hflip=7", "run.dir=x/y"]
)
def test_dry_run_refuses_before_any_work(
    override: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI says one line, exit 2, and nothing is created (here run.dir sits under a file)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").write_text("a file where the run folder's parent should be")
    run_dir = tmp_path / "run"
    args = ["train", "--config", "quickstart_digits", f"run.dir={run_dir}", override, "--dry-run"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("convnext train: error: config key ") and "\n" not in err
    assert not run_dir.exists()


def test_run_dir_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "taken"
    f.write_text("")
    with pytest.raises(UserError, match=f"config key run.dir: {f} is a file, not a folder"):
        load_config("quickstart_digits", [f"run.dir={f}"])
    with pytest.raises(UserError, match=f"cannot be created: {f} is a file"):
        load_config("quickstart_digits", [f"run.dir={f}/sub/run"])
    assert load_config("quickstart_digits", [f"run.dir={f}"], check_paths=False).run.dir == str(f)


def test_recipe_file_problems_are_one_sentence(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("# r\xe9glages\nepochs: 3\n".encode("latin-1"))
    bom = tmp_path / "bom.yaml"
    bom.write_bytes("\ufeffepochs: 3\nschedule: {warmup_epochs: 1}\ndata: {dataset: digits}\n".encode())
    twice = tmp_path / "twice.yaml"
    twice.write_text("optim:\n  lr: 0.1\n  lr: 0.2\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("optim: {lr: 0.1\nepochs: 3\n")
    loop = tmp_path / "loop.yaml"
    loop.write_text("inherit: loop.yaml\n")
    cases = {
        latin1: f"config file {latin1} is not UTF-8 text (byte 0xe9 at offset 3); save it as UTF-8",
        twice: "key 'lr' appears twice (line 3, column 3)",
        broken: f"config file {broken} is not valid YAML",
        loop: "inherits from itself",
        tmp_path: "is a folder, not a recipe file",
    }
    for path, message in cases.items():
        with pytest.raises(UserError) as e:
            load_config(path)
        assert message in str(e.value) and "\n" not in str(e.value), path
    assert load_config(bom).epochs == 3  # a UTF-8 byte-order mark (Windows editors) is fine


def test_grad_checkpointing_is_refused_only_where_the_family_lacks_it() -> None:
    """Every family supports model.grad_checkpointing, or the config check refuses it in one sentence."""
    import torch

    from convnext.models import build_model

    for name in ("convnext_atto", "convnextv2_atto", "convnext_isotropic_small"):
        with torch.device("meta"):
            supported = callable(getattr(build_model(name, num_classes=2), "set_grad_checkpointing", None))
        overrides = [f"model.name={name}", "model.grad_checkpointing=true", "model.options={}"]
        if supported:
            assert load_config("quickstart_digits", overrides).model.grad_checkpointing
        else:
            with pytest.raises(UserError, match="config key model.grad_checkpointing: .* does not support"):
                load_config("quickstart_digits", overrides)


def test_model_options_that_fit_the_family_pass(tmp_path: Path) -> None:
    cfg = load_config(
        "quickstart_digits",
        ["model.name=convnext_isotropic_small", "model.options={depth: 2, dim: 32}", "data.img_size=32"],
    )
    assert cfg.model.options == {"depth": 2, "dim": 32}
    cfg = load_config("quickstart_digits", ["model.name=convnextv2_atto", "model.options={in_chans: 3}"])
    assert cfg.model.options == {"in_chans": 3}


@pytest.mark.parametrize(
    ("overrides", "mode"),
    [
        ([], "center"),
        (["data.img_size=384"], "squash"),  # the official build_transform warps at 384 and up
        (["data.img_size=512"], "squash"),
        (["data.img_size=384", "data.crop_mode=center"], "center"),  # said explicitly: kept
        (["data.crop_mode=squash"], "squash"),
    ],
)
def test_crop_mode_left_unset_follows_the_official_rule(
    overrides: list[str], mode: str, tmp_path: Path
) -> None:
    """A fine-tune at 384 px from finetune_folder evaluates as the official code does (whole image, no crop),
    and the run folder records it, so predict/evaluate on the run use the same transform."""
    cfg = load_config("finetune_folder", [f"data.root={tmp_path}", *overrides], check_paths=False)
    assert cfg.data.crop_mode == mode
    assert config_from_dict(to_dict(cfg)).data.crop_mode == mode


# ------------------------------------------------------------------- memory of a training step
def test_dry_run_refuses_an_image_size_that_cannot_be_allocated(capsys: pytest.CaptureFixture) -> None:
    """data.img_size=20000 passed --dry-run and died allocating; now one sentence naming the keys, the
    estimate and the machine's memory, and train.memory_check=false lets it through."""
    base = ["train", "--config", "quickstart_digits", "data.img_size=20000", "--dry-run"]
    assert main(base) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        "convnext train: error: config key data.img_size=20000 with train.batch_size=32 needs"
    )
    assert "TiB for a training step" in err and "more than" in err and "train.memory_check=false" in err
    assert "\n" not in err
    assert main([*base, "train.memory_check=false"]) == 0


def test_the_run_refuses_it_before_any_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run itself checks too (against a machine of 1 MiB here: without the check this trains one tiny
    epoch instead of allocating for real)."""
    from convnext.engine import preflight
    from convnext.engine.train import train

    monkeypatch.setattr(preflight, "device_memory", lambda device: (2**20, "this machine's RAM"))
    cfg = load_config("quickstart_digits", ["epochs=1", f"run.dir={tmp_path / 'run'}"])
    with pytest.raises(
        UserError, match=r"config key data.img_size=32 with train.batch_size=32 needs .* MiB\)"
    ):
        train(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_fits_the_machine_it_is_for(recipe: Path, tmp_path: Path) -> None:
    """The paper recipes are per-GPU batches: each fits a 32 GB GPU at its own size and precision; the CPU
    recipes fit 16 GB of RAM in fp32."""
    import torch

    from convnext.engine.preflight import check_step_memory

    cfg = load_config(recipe, [f"data.root={tmp_path}"], check_paths=False)
    on_cpu = recipe.stem in ("quickstart_digits", "finetune_folder", "quickstart_fcmae", "quickstart_fewshot")
    device, amp = (torch.device("cpu"), "none") if on_cpu else (torch.device("cuda"), cfg.train.amp)
    line = check_step_memory(cfg, device, amp, available=((16 if on_cpu else 32) * 2**30, "test"))
    assert line is not None and line.startswith("a training step needs about")


def test_step_memory_grows_with_batch_and_image_area() -> None:
    import torch

    from convnext.engine.preflight import check_step_memory, estimate_step_memory

    cfg = load_config("convnext_tiny_in1k", check_paths=False)
    base = estimate_step_memory(cfg, "none")
    cfg.train.batch_size *= 2
    batch2 = estimate_step_memory(cfg, "none")
    cfg.data.img_size *= 2
    both = estimate_step_memory(cfg, "none")
    assert both - base == pytest.approx(7 * (batch2 - base), rel=1e-3)  # activations: batch x img_size^2
    assert estimate_step_memory(cfg, "bf16") < 0.6 * both
    cfg.train.memory_check = False
    assert check_step_memory(cfg, torch.device("cpu"), "none", available=(1, "test")) is None
