"""The command line's conventions, the same in every verb: ``python -m convnext``, ``--version``, help
without torch, ``--json [FILE]``, ``--device auto``, ``--img-size`` from the weights, ``--no-progress`` and
bars only on a terminal, glob filters in ``convnext models`` and ``list_models``, a closed pipe ending
quietly."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import warnings
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

import convnext
from convnext.cli import common
from convnext.cli.main import VERBS, build_parser, main


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, **kw)


def _imported(importtime_stderr: str) -> set[str]:
    """Module names from ``python -X importtime`` (``import time: self | cumulative | name``)."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in importtime_stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


# ----------------------------------------------------------------------------------------- entry points
@pytest.mark.parametrize("verb", ["", *VERBS])
def test_help_needs_no_torch(verb: str) -> None:
    """`convnext --help` and `convnext <verb> --help` build their parsers without importing torch (the 3-5 s
    that made help slow): verb modules import torch inside their run function only."""
    proc = _cli("-X", "importtime", "-m", "convnext", *([verb] if verb else []), "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: convnext {verb}".rstrip())
    mods = _imported(proc.stderr)
    assert "convnext.cli.main" in mods  # the measurement saw our imports
    heavy = sorted(m for m in mods if m.split(".")[0] in ("torch", "torchvision", "timm"))
    assert not heavy, heavy[:5]


def test_train_dry_run_resolves_without_the_training_stack(tmp_path: Path) -> None:
    """`train --dry-run` resolves and validates a recipe with engine/config.py alone: the training loop
    (engine.train, loaders, trackers) is not imported, and engine/config.py imports no torch itself (the
    model-option check builds the model on the meta device, which needs torch: that import is the models').
    Without --config or --resume, the sentence names the bundled recipes."""
    proc = _cli("-X", "importtime", "-c", "import convnext.engine.config")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not [m for m in _imported(proc.stderr) if m.split(".")[0] in ("torch", "torchvision")]
    proc = _cli("-X", "importtime", "-m", "convnext", "train", "--config", "quickstart_digits", "--dry-run")
    assert proc.returncode == 0 and "epochs:" in proc.stdout, proc.stderr[-2000:]
    mods = _imported(proc.stderr)
    assert "convnext.engine.config" in mods
    assert not {"convnext.engine.train", "convnext.data.loader", "convnext.engine.trackers"} & mods
    proc = _cli("-m", "convnext", "train", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "convnext train: error: pass --config NAME (a bundled recipe, `convnext recipes` lists them, or a "
        "YAML file), or --resume PATH to continue a run"
    )


def test_python_m_convnext_and_version() -> None:
    """`python -m convnext` is the `convnext` script; --version is the installed distribution's, which
    pyproject.toml sets (one source of truth)."""
    proc = _cli("-m", "convnext", "--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"convnext {version('convnext')}"
    assert convnext.__version__ == version("convnext")
    proc = _cli("-m", "convnext", "models", "convnext_tiny", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model"] == "convnext_tiny"


def test_closed_pipe_ends_quietly() -> None:
    """`convnext models --weights | head -2`: the reader goes away; no BrokenPipeError traceback, and no
    'Exception ignored' from the interpreter's last flush either."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "convnext", "models", "--weights"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # before anything is written: every write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141  # 128 + SIGPIPE, as a shell reports it
    assert err == ""


# ------------------------------------------------------------------------------------ flags, every verb
def _options(verb: str) -> dict[str, argparse.Action]:
    sub = build_parser((verb,))._subparsers._group_actions[0].choices[verb]  # type: ignore[union-attr]
    return {s: a for a in sub._actions for s in a.option_strings}


@pytest.mark.parametrize("verb", VERBS)
def test_shared_flags_mean_the_same_in_every_verb(verb: str) -> None:
    opts = _options(verb)
    if "--json" in opts:  # --json [FILE]: no value (or -) is stdout; FILE must be .json/.jsonl
        assert opts["--json"].nargs == "?" and opts["--json"].const == "-", verb
        assert opts["--json"].type is common._json_target, verb
    for flag in ("--batch-size", "--topk", "--repeats"):  # 0 is an argparse error naming the flag
        if flag in opts:
            assert opts[flag].type is common.positive_int, (verb, flag)
    if "--device" in opts:
        assert opts["--device"].default == "auto", verb
    if "--img-size" in opts:
        assert opts["--img-size"].default is None, verb  # the weights' own
    if verb in ("train", "evaluate", "predict", "prepare"):  # the verbs that draw progress bars
        assert "--no-progress" in opts, verb


def test_convert_targets_are_the_writers() -> None:
    from convnext.cli.convert import TARGETS
    from convnext.weights.write import TARGETS as WRITTEN

    assert TARGETS == WRITTEN


# -------------------------------------------------------------------------------------- models, globs
def test_list_models_takes_a_glob_as_timm() -> None:
    assert convnext.list_models("*tiny*") == ["convnext_tiny", "convnextv2_tiny", "convnext_tiny_hnf"]
    assert convnext.list_models("convnext_t*") == ["convnext_tiny", "convnext_tiny_hnf"]
    assert convnext.list_models(["*_atto", "convnext_isotropic_s*"]) == [
        "convnext_atto",
        "convnextv2_atto",
        "convnext_isotropic_small",
    ]
    assert convnext.list_models("*tiny*", family="v2") == ["convnextv2_tiny"]
    assert convnext.list_models(family="isotropic") == [n for n in convnext.list_models() if "isotropic" in n]
    assert convnext.list_models("nothing*") == []
    with pytest.warns(DeprecationWarning, match="family="):  # the old positional family still works
        assert convnext.list_models("v2") == convnext.list_models(family="v2")


def test_models_pattern_filters_architectures_and_weights(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "convnext_t*", "--json"]) == 0
    models = [json.loads(line)["model"] for line in capsys.readouterr().out.splitlines()]
    assert models == ["convnext_tiny", "convnext_tiny_hnf"]
    assert main(["models", "--weights", "convnextv2_tiny*", "--json"]) == 0
    tags = [json.loads(line)["tag"] for line in capsys.readouterr().out.splitlines()]
    assert tags and all(t.startswith("convnextv2_tiny.") for t in tags)
    assert main(["models", "--weights", "convnext_atto"]) == 0  # a bare arch name: its tags
    assert "convnext_atto.d2_in1k" in capsys.readouterr().out
    assert main(["models", "convnext_nope*"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "convnext models: error: no architecture matches 'convnext_nope*'; `convnext models` lists them all"
    ]


def test_json_flag_stdout_or_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json and --json - print only JSON; --json FILE writes it and keeps the text; a value that is not a
    .json/.jsonl name is refused instead of being overwritten (a pattern or an image after --json)."""
    for argv in (["--json"], ["--json", "-"]):
        assert main(["models", "convnext_atto", *argv]) == 0
        out = capsys.readouterr().out
        assert json.loads(out)["model"] == "convnext_atto"  # the whole of stdout is the JSON
    dst = tmp_path / "sub" / "models.jsonl"
    assert main(["models", "convnext_atto", "--json", str(dst)]) == 0
    assert "GFLOPs are multiply-adds" in capsys.readouterr().out
    assert json.loads(dst.read_text())["model"] == "convnext_atto"
    assert not list(dst.parent.glob(".*"))  # written through a temporary name, nothing left beside it
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(b"\xff\xd8\xff")
    with pytest.raises(SystemExit) as e:
        main(["models", "--json", str(photo)])
    assert e.value.code == 2 and photo.read_bytes() == b"\xff\xd8\xff"
    assert "is not a .json/.jsonl file name" in capsys.readouterr().err


def _ours_weights(tmp_path: Path) -> tuple[Path, Path]:
    """A 2-class atto in our safetensors layout (class names cat, dog) and a folder of 2 + 2 images."""
    from torchvision.io import write_png

    from convnext.weights.write import write

    model = convnext.create_model("convnext_atto", num_classes=2)
    weights = tmp_path / "pets.safetensors"
    write(model.state_dict(), weights, "ours", arch="convnext_atto", class_names=["cat", "dog"],
          data_config=None, source="test")  # fmt: skip
    g = torch.Generator().manual_seed(0)
    for c in ("cat", "dog"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(2):
            img = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8, generator=g)
            write_png(img, str(tmp_path / "data" / c / f"{i}.png"))
    return weights, tmp_path / "data"


def test_evaluate_json_on_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """evaluate --json (no value, or -) prints the metrics document alone (it wrote a file named '-'), and
    --img-size defaults to the weights' size (224 here: ours has no eval preset, so the default geometry)."""
    weights, data = _ours_weights(tmp_path)
    base = ["evaluate", "--weights", str(weights), "--data", str(data), "--workers", "0", "--img-size", "32"]
    for flag in (["--json"], ["--json", "-"]):
        assert main([*base, *flag]) == 0
        m = json.loads(capsys.readouterr().out)
        assert m["n"] == 4 and m["img_size"] == 32 and m["model"] == "convnext_atto" and m["device"] == "cpu"
    assert not Path("-").exists()
    assert main(base[:-2] + ["--json", str(tmp_path / "m.json")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("model      convnext_atto") and "transform  224 px" in text
    assert json.loads((tmp_path / "m.json").read_text())["img_size"] == 224


# ------------------------------------------------------------------------------------------- progress
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _train(tmp_path: Path, *extra: str) -> None:
    argv = [
        "train", "--config", "configs/quickstart_digits.yaml",
        f"run.dir={tmp_path}", "epochs=1", "train.eval_every=0", "run.export_samples=0",
        "model.options={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}", "train.log_every=1", *extra,
    ]  # fmt: skip
    assert main(argv) == 0


def test_training_bars_only_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The training loop's tqdm bar: on a terminal by default, never in a log file or pipe (it wrote a line
    per refresh there), and off on a terminal with --no-progress (the same as train.progress=false)."""
    for name, stream, extra, bar in (
        ("tty", _Terminal(), (), True),
        ("log", io.StringIO(), (), False),
        ("quiet", _Terminal(), ("--no-progress",), False),
    ):
        monkeypatch.setattr(sys, "stderr", stream)
        _train(tmp_path / name, *extra)
        err = stream.getvalue()
        assert ("epoch 1/1:" in err) is bar, (name, err[-500:])


# ----------------------------------------------------------------------------------------- side effects
def test_importing_the_library_leaves_warning_filters_alone() -> None:
    """The decoder deprecation filter belongs to the command line's process, not to a library import."""
    code = (
        "import warnings, torch, torchvision.io, numpy, PIL.Image, tqdm, yaml, safetensors; "  # theirs first
        "before = list(warnings.filters); "
        "import convnext.data.images, convnext.inference.predict, convnext.engine.train, convnext.hub; "
        "print([f for f in warnings.filters if f not in before])"
    )
    proc = _cli("-c", code)
    assert proc.stdout.strip() == "[]", proc.stderr[-2000:]


def test_cli_hides_the_decoder_deprecation(capsys: pytest.CaptureFixture[str]) -> None:
    from torchvision.io import decode_image, encode_png

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # not pytest's filters (pyproject ignores this one for the suite)
        assert main(["models", "convnext_atto", "--json"]) == 0
        decode_image(encode_png(torch.zeros(3, 4, 4, dtype=torch.uint8)))
    assert not [w for w in seen if "decoding and encoding capabilities" in str(w.message)]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "--weights", "w", "--workers", "-1"], "argument --workers: must be at least 0, got -1"),
        (["predict", "x.png", "--weights", "w", "--topk", "0"], "argument --topk: must be at least 1, got 0"),
    ],
)
def test_counts_out_of_range_are_one_line_naming_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
