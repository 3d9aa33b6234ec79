"""Recipes travel with the package and hold the official numbers; layer decay is monotone for every depth."""

from __future__ import annotations

import fnmatch
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convnext.cli.main import main
from convnext.engine.config import load_config
from convnext.engine.optim import layer_ids, param_groups
from convnext.errors import UserError
from convnext.models import build_model
from convnext.recipe import RECIPES_DIR, bundled_recipes, find_recipe, read_yaml

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = sorted(n for n in bundled_recipes() if not n.startswith("_"))


# ------------------------------------------------------------------------------------- recipes by name
def test_recipe_by_name_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No configs/ folder in sight: --config NAME (with or without .yaml) finds the bundled recipe."""
    monkeypatch.chdir(tmp_path)
    by_path = load_config(RECIPES_DIR / "finetune_folder.yaml", [f"data.root={tmp_path}"])
    for ref in ("finetune_folder", "finetune_folder.yaml"):
        assert load_config(ref, [f"data.root={tmp_path}"]) == by_path
    assert main(["train", "--config", "quickstart_digits", "--dry-run", "epochs=2"]) == 0


def test_a_path_wins_over_a_bundled_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart_digits.yaml").write_text("inherit: quickstart_digits\nepochs: 3\n")
    assert load_config("quickstart_digits.yaml").epochs == 3  # the local file (which inherits the bundled)
    assert load_config("quickstart_digits").epochs == 10  # a bare name (no such file here) is the bundled one
    (tmp_path / "quickstart_digits").write_text("epochs: 4\nschedule: {warmup_epochs: 1}\n")
    assert load_config("quickstart_digits", check_paths=False).epochs == 4  # unless a file has that name


def test_readme_configs_path_finds_the_bundled_recipe_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--config configs/NAME.yaml` (the checkout's path) outside the checkout is the bundled recipe; it
    failed there, naming the recipe it could not find as the one it suggested."""
    monkeypatch.chdir(tmp_path)
    for ref in ("configs/finetune_folder.yaml", "./configs/finetune_folder.yml", "configs/finetune_folder"):
        assert find_recipe(ref) == RECIPES_DIR / "finetune_folder.yaml", ref
    argv = ["train", "--config", "configs/finetune_folder.yaml", f"data.root={tmp_path}", "--dry-run"]
    assert main(argv) == 0
    (tmp_path / "configs").mkdir()  # an existing file still wins
    (tmp_path / "configs" / "quickstart_digits.yaml").write_text("inherit: quickstart_digits\nepochs: 3\n")
    assert load_config("configs/quickstart_digits.yaml").epochs == 3
    assert load_config("configs/quickstart_digits").epochs == 10
    mine = tmp_path / "mine.yaml"  # inherit: a configs/ path finds the bundled recipe too
    mine.write_text("inherit: configs/convnext_tiny_in1k.yaml\nepochs: 5\nschedule: {warmup_epochs: 1}\n")
    assert load_config(mine, [f"data.root={tmp_path}"]).optim.lr == 4e-3


@pytest.mark.parametrize("name", PUBLIC)
def test_missing_path_never_suggests_the_name_it_failed_on(name: str, tmp_path: Path) -> None:
    """A missing file elsewhere is not guessed into a bundled recipe, and the sentence points at the bundled
    one by the name that works instead of suggesting the very name that failed."""
    ref = tmp_path / "nowhere" / f"{name}.yaml"
    with pytest.raises(UserError) as e:
        find_recipe(ref)
    msg = str(e.value)
    assert f"did you mean {name}?" not in msg and "no bundled recipe is called" not in msg
    assert (
        msg == f"config file {ref} does not exist; for the bundled recipe of that name pass --config {name}"
    )
    with pytest.raises(UserError, match=r"did you mean finetune_folder\?"):
        find_recipe("configs/finetune_foldr.yaml")


def test_unknown_recipe_is_one_sentence_with_a_suggestion(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--config", "finetune_fold"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("convnext train: error: config file finetune_fold does not exist")
    assert "did you mean finetune_folder?" in err and "\n" not in err
    with pytest.raises(UserError, match="is a folder"):
        find_recipe(RECIPES_DIR)


def test_user_recipe_inherits_a_bundled_one_by_name(tmp_path: Path) -> None:
    """An installed-like layout: the user's recipe lives far from the package and names its parent."""
    mine = tmp_path / "elsewhere" / "my_tiny.yaml"
    mine.parent.mkdir()
    mine.write_text("inherit: convnext_tiny_in1k\nepochs: 5\nschedule: {warmup_epochs: 1}\n")
    cfg = load_config(mine, [f"data.root={tmp_path}"])
    assert (cfg.model.name, cfg.optim.lr, cfg.epochs, cfg.schedule.warmup_epochs) == (
        "convnext_tiny",
        4e-3,
        5,
        1,
    )
    assert cfg.data.randaugment == "rand-m9-mstd0.5-inc1"  # from _in1k_defaults, two levels up


def test_copied_recipe_keeps_working(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`convnext recipes NAME > my.yaml`: the copy (with its inherit: line) loads as the bundled recipe."""
    assert main(["recipes", "convnext_base_in22ft1k_224"]) == 0
    copy = tmp_path / "my.yaml"
    copy.write_text(capsys.readouterr().out)
    assert read_yaml(copy) == read_yaml("convnext_base_in22ft1k_224")
    assert main(["recipes", "convnext_base_in22ft1k_224", "--resolved"]) == 0
    assert "layer_decay: 0.8" in capsys.readouterr().out


def test_recipes_verb_lists_every_recipe_in_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {ln.split()[0]: ln.split(None, 1)[1] for ln in lines if ln and ln.split()[0] in PUBLIC}
    assert sorted(listed) == PUBLIC and not any(n.startswith("_") for n in listed)
    for name, what in listed.items():  # what it trains, on what data
        assert len(what) > 30, name
        assert any(w in what for w in ("ImageNet", "image folder", "digits")), name


def test_package_data_ships_every_recipe() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for path in RECIPES_DIR.iterdir():
        rel = path.relative_to(RECIPES_DIR.parent).as_posix()
        assert any(fnmatch.fnmatch(rel, p) for p in patterns["convnext"]), rel
    assert (ROOT / "configs").resolve() == RECIPES_DIR  # the checkout's configs/ is the package's


def test_installed_package_finds_its_recipes(tmp_path: Path) -> None:
    """The package copied alone (as pip installs it: no checkout, no configs/ beside the working folder)."""
    site = tmp_path / "site"
    shutil.copytree(RECIPES_DIR.parent, site / "convnext", ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "work"
    work.mkdir()
    (work / "mine.yaml").write_text("inherit: quickstart_digits\nepochs: 2\n")
    code = (
        "from convnext.engine.config import load_config\n"
        "from convnext.recipe import RECIPES_DIR\n"
        "print(RECIPES_DIR)\n"
        "print(load_config('quickstart_digits').model.name, load_config('mine.yaml').epochs)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(site / "convnext" / "configs"), "convnext_atto", "2"]


# ---------------------------------------------------------------------------------- official numbers
def test_in1k_to_384_finetunes_are_training_mds() -> None:
    """TRAINING.md "Finetune from ImageNet-1K pre-training" (B: drop_path 0.8, L: 0.95; both layer decay
    0.7, batch 32 x 8 GPUs x update_freq 2, lr 5e-5, wd 1e-8, 30 epochs, no warmup, head_init_scale 0.001,
    no MixUp/CutMix, input 384)."""
    for size, dp in (("base", 0.8), ("large", 0.95)):
        cfg = load_config(f"convnext_{size}_in1k_384", check_paths=False)
        assert (cfg.model.name, cfg.model.pretrained, cfg.model.drop_path_rate) == (
            f"convnext_{size}",
            f"convnext_{size}.fb_in1k",
            dp,
        )
        o = cfg.optim
        assert (o.lr, o.lr_base_batch, o.weight_decay, o.layer_decay) == (5e-5, 512, 1e-8, 0.7)
        assert (cfg.epochs, cfg.schedule.warmup_epochs, cfg.model.head_init_scale) == (30, 0, 0.001)
        assert (cfg.data.mixup, cfg.data.cutmix, cfg.data.img_size, cfg.ema.enabled) == (0, 0, 384, False)
        assert cfg.train.batch_size * 8 * cfg.train.accum_steps == 512


def test_isotropic_and_xlarge_recipes_are_training_mds() -> None:
    for size, dp, ls, per_gpu in (
        ("small", 0.1, 0.0, 128),
        ("base", 0.2, 0.0, 128),
        ("large", 0.5, 1e-6, 64),
    ):
        cfg = load_config(f"convnext_isotropic_{size}_in1k", check_paths=False)
        assert (cfg.model.drop_path_rate, cfg.model.layer_scale_init_value) == (dp, ls)
        assert (cfg.schedule.warmup_epochs, cfg.optim.lr, cfg.ema.enabled, cfg.ema.eval) == (
            50,
            4e-3,
            True,
            True,
        )
        assert cfg.train.batch_size == per_gpu and cfg.train.batch_size * 8 * cfg.train.accum_steps == 4096
    cfg = load_config("convnext_xlarge_in22k", check_paths=False)
    assert (cfg.model.drop_path_rate, cfg.epochs, cfg.model.num_classes) == (0.2, 90, 21841)
    for px, per_gpu in ((224, 16), (384, 8)):
        cfg = load_config(f"convnext_xlarge_in22ft1k_{px}", check_paths=False)
        assert (cfg.model.drop_path_rate, cfg.optim.layer_decay, cfg.ema.enabled, cfg.ema.eval) == (
            0.4,
            0.8,
            True,
            True,
        )
        assert cfg.train.batch_size == per_gpu and cfg.train.batch_size * 8 * cfg.train.accum_steps == 512


def test_paper_recipes_precision_is_the_documented_choice() -> None:
    """bf16: a deliberate deviation from the official fp32 (README "Train" says why); one key restores it."""
    readme = (ROOT / "README.md").read_text()
    for name in PUBLIC:
        if "_in1k" in name or "_in22" in name:
            assert load_config(name, check_paths=False).train.amp == "bf16", name
    assert "train.amp=none" in readme and "deliberate" in readme
    assert load_config("convnext_tiny_in1k", ["train.amp=none"], check_paths=False).train.amp == "none"


def test_workers_default_to_what_the_machine_has(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from convnext.data.config import auto_workers

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for ref in ("finetune_folder", "convnext_tiny_in1k"):
        assert load_config(ref, [f"data.root={tmp_path}"]).data.workers == min(8, cores)
    assert load_config("quickstart_digits").data.workers == 0  # exact, stays as written
    for value in ("auto", "null"):
        assert load_config("quickstart_digits", [f"data.workers={value}"]).data.workers == min(8, cores)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")  # torchrun: the node's cores are shared between ranks
    assert auto_workers() == min(8, cores // 64)
    with pytest.raises(UserError, match="config key data.workers must be an integer, got 'many'"):
        load_config("quickstart_digits", ["data.workers=many"])


# -------------------------------------------------------------------------------------- layer decay
def _depth_order(model: torch.nn.Module) -> list[str]:
    """Parameter names from the input to the output (named_parameters lists all downsampling first)."""
    names = [n for n, _ in model.named_parameters()]
    if hasattr(model, "stages"):
        ordered = []
        for i in range(4):
            ordered += [n for n in names if n.startswith(f"downsample_layers.{i}.")]
            ordered += [n for n in names if n.startswith(f"stages.{i}.")]
        return ordered + [n for n in names if n not in ordered]
    return names  # isotropic: stem, blocks, norm, head already in order


NARROW = {"dims": (8, 16, 32, 64)}
MODELS = {
    "convnext_tiny": NARROW,
    "convnext_small": NARROW,
    "convnext_base": NARROW,
    "convnext_large": NARROW,
    "convnext_atto": {"depths": (1, 1, 2, 1), **NARROW},
    "convnextv2_atto": NARROW,
    "convnextv2_tiny": NARROW,
    "convnextv2_base": NARROW,
    "convnext_isotropic_small": {"dim": 16},
}


@pytest.mark.parametrize("arch", MODELS)
def test_layer_decay_is_monotone_at_every_depth(arch: str) -> None:
    """From the stem to the head the layer id never falls and never skips, so neighbouring layers' lr differ
    by at most one factor of the decay, for every depth (ConvNeXt-T's 9-block stage gave ids 0-5, 12, 13:
    a 4.8x jump at decay 0.8)."""
    model = build_model(arch, num_classes=3, **MODELS[arch])
    layer_of, head = layer_ids(model)
    ids = [layer_of(n) for n in _depth_order(model)]
    assert ids[0] == 0 and ids[-1] == head
    assert all(0 <= b - a <= 1 for a, b in zip(ids, ids[1:]))
    assert sorted(set(ids)) == list(range(head + 1))
    d = 0.7
    groups = param_groups(model, 0.05, d)
    scales = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scales["head.weight"] == 1.0
    order = _depth_order(model)
    for a, b in zip(order, order[1:]):
        assert scales[a] <= scales[b] and scales[b] / scales[a] <= 1 / d + 1e-9


def _official_layer_id(name: str) -> int:
    """The official optim_factory.get_num_layer_for_convnext (a [3, 3, 27, 3] model), transcribed."""
    parts = name.split(".")
    if parts[0] == "downsample_layers":
        return {0: 0, 1: 2, 2: 3, 3: 12}[int(parts[1])]
    if parts[0] == "stages":
        stage, block = int(parts[1]), int(parts[2])
        return {0: 1, 1: 2, 3: 12}.get(stage, 3 + block // 3)
    return 13


@pytest.mark.parametrize("arch", ["convnext_small", "convnext_base", "convnext_large", "convnextv2_base"])
def test_layer_ids_equal_the_official_ones_for_27_block_models(arch: str) -> None:
    model = build_model(arch, num_classes=3, **NARROW)
    layer_of, head = layer_ids(model)
    assert head == 13
    for name, _ in model.named_parameters():
        assert layer_of(name) == _official_layer_id(name), name
    groups = param_groups(model, 0.05, 0.8)
    for g in groups:
        assert math.isclose(g["lr_scale"], 0.8 ** (13 - g["layer_id"]))


def test_tiny_layer_ids_are_consecutive() -> None:
    model = build_model("convnext_tiny", num_classes=3, **NARROW)
    layer_of, head = layer_ids(model)
    ids = sorted({layer_of(n) for n, _ in model.named_parameters()})
    assert ids == list(range(8)) and head == 7  # stage 2's 9 blocks in three groups, then stage 3, head
    assert layer_of("stages.2.8.dwconv.weight") == 5 and layer_of("stages.3.0.dwconv.weight") == 6
