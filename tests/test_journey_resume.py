"""Resume and configuration as users run them: the same command again after the pretrained file is gone,
a run folder evaluated from another folder, a resume with more epochs, and `--dry-run` on a run folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from convnext.cli.main import main
from convnext.engine.checkpoint import load_train_checkpoint

TINY_OPTS = "model.options={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}"
QUICK = [
    "--config",
    "quickstart_digits",
    TINY_OPTS,
    "train.progress=false",
    "run.export_samples=0",
    "run.loggers=[]",
]

pytestmark = pytest.mark.usefixtures("one_thread")


def _pretrained(path: Path) -> Path:
    """A 5-class checkpoint of the tiny model: fine-tuning it on the 10 digits starts a fresh classifier."""
    from convnext import create_model

    torch.manual_seed(1)
    model = create_model("convnext_atto", num_classes=5, depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
    torch.save(model.state_dict(), path)
    return path


def _same_weights(a: Path, b: Path) -> None:
    ca, cb = load_train_checkpoint(a), load_train_checkpoint(b)
    assert (ca["epoch"], ca["step"]) == (cb["epoch"], cb["step"])
    for key in ("model", "optimizer"):
        sa, sb = ca[key], cb[key]
        if key == "optimizer":
            sa, sb = sa["state"], sb["state"]
            sa = {f"{k}.{n}": v for k, d in sa.items() for n, v in d.items()}
            sb = {f"{k}.{n}": v for k, d in sb.items() for n, v in d.items()}
        assert sa.keys() == sb.keys()
        for name in sa:
            assert torch.equal(torch.as_tensor(sa[name]), torch.as_tensor(sb[name])), f"{key} {name}"


def test_resume_needs_no_pretrained_file(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """Fine-tune from a file, stop after epoch 1, delete the file (a scratch purge), run the same command
    again: it resumes from the checkpoint alone, silently about the file, and ends bit-identical to an
    uninterrupted run."""
    weights = _pretrained(tmp_path / "backbone.pth")
    straight, run = tmp_path / "straight", tmp_path / "run"
    args = [*QUICK, "epochs=2", "checkpoint.keep_last=2", f"model.pretrained={weights}"]
    assert main(["train", *args, f"run.dir={straight}"]) == 0
    assert "the classifier starts fresh" in caplog.text  # the file was loaded
    caplog.clear()
    capsys.readouterr()  # the CLI said it on stderr too (convnext train: warning: ...)
    # what a run killed after epoch 1 leaves: its checkpoint (last.pth is a copy of epoch_0001.pth then)
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(straight / "checkpoints" / "epoch_0001.pth", run / "checkpoints" / "last.pth")
    weights.unlink()

    assert main(["train", *args, f"run.dir={run}"]) == 0  # the very same command
    err = capsys.readouterr().err
    assert "resuming" in err and "backbone.pth" not in err + caplog.text, err
    _same_weights(straight / "checkpoints" / "last.pth", run / "checkpoints" / "last.pth")
    # --fresh starts over from the file, and says that it is gone
    assert main(["train", *args, f"run.dir={run}", "--fresh"]) == 2
    assert "config key model.pretrained" in capsys.readouterr().err


def _image_folder(root: Path) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for k, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True)
            for i in range(4):
                pixels = (torch.rand(32, 32, 3, generator=g) * 100 + 120 * k).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    (root.parent / "classes.txt").write_text("cat\ndog\n")


def test_relative_paths_are_stored_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`data.root=my_data` typed in one folder; `convnext evaluate --weights <run>` from another works, and
    when the data has moved the error says to pass --data."""
    here, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    elsewhere.mkdir()
    _image_folder(here / "my_data")
    monkeypatch.chdir(here)
    args = [
        *QUICK,
        "epochs=1",
        "data.dataset=imagefolder",
        "data.root=my_data",
        "data.class_list=classes.txt",
        "train.batch_size=4",
        "run.dir=runs/pets",
    ]
    assert main(["train", *args]) == 0
    run = here / "runs" / "pets"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["root"] == str(here / "my_data")
    assert saved["data"]["class_list"] == str(here / "classes.txt")
    assert saved["run"]["dir"] == str(run)
    assert load_train_checkpoint(run / "checkpoints" / "last.pth")["config"]["data"]["root"] == str(
        here / "my_data"
    )
    capsys.readouterr()

    monkeypatch.chdir(elsewhere)
    assert main(["evaluate", "--weights", str(run), "--no-progress"]) == 0
    assert "8 images" in capsys.readouterr().out
    # a run folder written before paths were stored absolute: found at <project>/runs/pets, its relative
    # run.dir says where data.root=my_data was typed
    for f in (run / "checkpoints").glob("*.pth"):
        ckpt = torch.load(f, weights_only=True)
        ckpt["config"]["data"].update(root="my_data", class_list="classes.txt")
        ckpt["config"]["run"]["dir"] = "runs/pets"
        torch.save(ckpt, f)
    assert main(["evaluate", "--weights", str(run), "--no-progress"]) == 0
    assert "8 images" in capsys.readouterr().out

    (here / "my_data").rename(here / "moved")
    assert main(["evaluate", "--weights", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "does not exist here; pass --data" in err and "\n" not in err.strip()
    assert main(["evaluate", "--weights", str(run), "--data", str(here / "moved"), "--no-progress"]) == 0


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch run of the tiny model on the digits."""
    run = tmp_path_factory.mktemp("one_epoch")
    assert main(["train", *QUICK, "epochs=1", f"run.dir={run}"]) == 0
    return run


def _dry(run: Path, capsys: pytest.CaptureFixture, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["train", *QUICK, f"run.dir={run}", *extra, "--dry-run"])
    return code, capsys.readouterr().err


def test_dry_run_checks_the_resume_as_the_run_does(one_epoch: Path, capsys: pytest.CaptureFixture) -> None:
    last = one_epoch / "checkpoints" / "last.pth"
    step = load_train_checkpoint(last, mmap=True)["step"]
    code, err = _dry(one_epoch, capsys, "epochs=1")
    assert code == 0 and f"{last} has already completed 1 of 1 epochs" in err
    code, err = _dry(one_epoch, capsys, "epochs=3")
    assert code == 0 and f"would resume {last} at epoch 2 of 3 (optimizer step {step})" in err
    assert f"epochs 1 -> 3 since checkpoint {last}: the cosine lr schedule stretches" in err
    assert f"from step {step} on" in err
    code, err = _dry(one_epoch, capsys, "epochs=3", "--fresh")
    assert code == 0 and "would start a new run" in err and "moving the earlier run's files aside" in err
    # what the real run refuses, the dry run refuses: another model, another class count
    code, err = _dry(
        one_epoch, capsys, "epochs=3", "model.options={depths: [1, 1, 2, 1], dims: [8, 16, 32, 64]}"
    )
    assert code == 2 and "config key model.options is" in err and str(last) in err
    code, err = _dry(one_epoch, capsys, "epochs=3", "model.name=convnextv2_atto")
    assert code == 2 and "holds a convnext_atto" in err
    code, err = _dry(one_epoch, capsys, "epochs=3", "model.num_classes=5")
    assert code == 2 and "trained on 10 classes but model.num_classes=5" in err
    assert sorted(p.name for p in one_epoch.iterdir() if p.name.startswith("previous")) == []  # nothing moved


def test_more_epochs_on_resume_say_the_schedule_stretches(
    one_epoch: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    step = load_train_checkpoint(run / "checkpoints" / "last.pth", mmap=True)["step"]
    capsys.readouterr()
    assert main(["train", *QUICK, "epochs=2", f"run.dir={run}"]) == 0
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "epochs 1 -> 2" in x]
    assert len(lines) == 1 and f"stretches to 2 epochs from step {step} on" in lines[0], err
    assert "warning" in lines[0]
