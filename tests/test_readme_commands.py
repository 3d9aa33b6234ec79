"""Every command in the README's ```bash blocks, run as a reader runs it: from a folder outside the checkout,
with the installed ``convnext`` (and ``torchrun``) on PATH, so that the README cannot drift from the code.

A command runs exactly as written, except for

- the substitutions every command gets (``GLOBAL``): a reader's data under ``/data/...`` or ``~/Downloads``
  is a tiny generated folder of the same layout in the working folder, and training commands get
  ``--dry-run`` (which checks the whole recipe: keys, values, data folders, weights, run folder), and
  without a GPU the ImageNet recipes' lines skip the dry-run's RAM check (``_NO_GPU``: sized for GPUs);
- the few commands ``RULES`` names, each with its reason: slow ones run in ``test_slow_readme_command``
  (``pytest -m slow``), some run with a small substitute (fewer processes, a smaller benchmark), a few are
  skipped (four nodes, a GPU, real CIFAR files).

A command no rule names runs in CI: adding a runnable command to the README needs nothing here, and one
that cannot run needs one line in RULES saying why. Files the commands name (photo.jpg, my_data/, runs/pets,
the ConvNeXt-T release behind its tag, ...) are made in the working folder by ``workspace`` and ``ARTEFACTS``;
the run folders come from two short trainings per session (the quickstart, the ImageNet recipe).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent  # the environment's `convnext` and `torchrun`
TIMEOUT_S = 600


# ------------------------------------------------------------------------------------ the README's commands
@dataclass(frozen=True)
class Command:
    line: int  # where it starts in README.md
    text: str  # as written: continuation lines joined, the trailing comment removed

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text}"


_ENV_PREFIX = r"(?:[A-Za-z_][A-Za-z0-9_]*=\S+\s+)*"
_OURS = re.compile(
    rf"^{_ENV_PREFIX}(?:convnext(?:\s|$)|python3? -m convnext(?:\s|$)|torchrun\s.*-m convnext)"
)


def _strip_comment(line: str) -> str:
    """The line without its shell comment: a ``#`` outside quotes, at the start or after a blank."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def readme_commands(text: str) -> list[Command]:
    """Every ``convnext ...``, ``python -m convnext ...`` and ``torchrun ... -m convnext ...`` command of the
    ```bash blocks (``make``, ``pip``, ``curl`` lines are not ours to run)."""
    out: list[Command] = []
    in_bash, pending, start = False, "", 0
    for no, line in enumerate(text.splitlines(), 1):
        fence = line.strip()
        if fence.startswith("```"):
            in_bash = fence == "```bash" and not in_bash
            pending = ""
            continue
        if not in_bash:
            continue
        if not pending:
            start = no
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1].rstrip() + " "
            continue
        full = _strip_comment(pending + line.strip()).strip()
        pending = ""
        if _OURS.match(full):
            out.append(Command(start, re.sub(r"\s+", " ", full)))
    return out


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- how each command is run here
@dataclass(frozen=True)
class Rule:
    """How the README commands matching ``pattern`` (a regex searched in the command) are run here."""

    pattern: str
    why: str  # what differs from the README and why: the table is the list of every departure
    kind: str = "slow"  # slow: only with -m slow | skip: never | fast: in CI (with sub/add below)
    sub: tuple[tuple[str, str], ...] = ()  # (regex, replacement) applied to the command
    add: str = ""  # arguments appended (argparse: a flag given again takes the last value)
    rc: int = 0  # the exit code the README documents for it


EXPORT = "export + verification in its runtime (onnxruntime, OpenVINO, torch.export); int8 calibrates (NNCF)"
TINY = "ConvNeXt-T weights (110 MB) read, run at 224 px or written"
# Every command starts torch (~4 s of CPU): CI runs each verb and each kind of source once, and the other
# lines of the same kind under -m slow.
AGAIN = "another line of a kind CI runs once (each command starts torch, ~4 s of CPU)"
RULES: tuple[Rule, ...] = (
    Rule(r"^convnext models --weights '", AGAIN),
    Rule(r"^convnext convert (timm_convnext_tiny\.bin|convnext_tiny\.fb_in1k|ConvNext_tiny)", TINY),
    Rule(
        r"^convnext convert runs/pets \S+ --to torchvision",
        "runs/pets here is the small quickstart model, and torchvision's ConvNeXt holds only tiny to large: "
        "the ConvNeXt-T release stands in; " + TINY,
        sub=((r"convert runs/pets", "convert convnext_tiny.fb_in1k"),),
    ),
    Rule(r"^convnext convert runs/pets \S+ --to hf", AGAIN),
    Rule(
        r"^convnext train --config finetune_folder .*run\.dir=runs/pets",
        "runs/pets here holds the small quickstart model (a ConvNeXt-T fine-tune writes 1 GB of checkpoints),"
        " which the dry-run rightly refuses to resume as ConvNeXt-T: another run.dir",
        kind="fast",
        sub=((r"run\.dir=runs/pets\b", "run.dir=runs/pets_finetune"),),
    ),
    Rule(r"--nnodes 4\b", "four nodes and a rendezvous host", kind="skip"),
    Rule(
        r"--nnodes 2 --nproc_per_node 1 --rdzv_backend c10d",
        "one of two agents that must run side by side (alone it waits for the other at the rendezvous): "
        "tests/test_launch.py runs the pair, and compares the run with one agent of two processes",
        kind="skip",
    ),
    Rule(
        r"^torchrun --nproc_per_node 2 --max-restarts",
        "two processes, each starting torch (the dry-run restarts nothing): tests/test_launch.py kills a "
        "rank of this launch and checks the restarted group's result",
    ),
    Rule(
        r"^torchrun --nproc_per_node 8\b(?!.*( pretrain |_ft_in1k ))",
        "8 GPUs: 2 CPU processes (gloo) run the same code path; each starts torch",
        sub=((r"--nproc_per_node 8\b", "--nproc_per_node 2"),),
    ),
    Rule(
        r"^convnext pretrain --config quickstart_fcmae$",
        "30 epochs of pre-training take minutes of CPU: 2 here",
        add="epochs=2 schedule.warmup_epochs=1",
    ),
    Rule(
        r"^torchrun --nproc_per_node 8 .* pretrain --config fcmae_",
        "1600 epochs on 8 GPUs: 2 CPU processes (gloo) check it with --dry-run (RAM check off: the recipe "
        "is sized for GPUs)",
        sub=((r"--nproc_per_node 8\b", "--nproc_per_node 2"),),
        add="--dry-run train.memory_check=false",
    ),
    Rule(
        r"--config convnextv2_\w+_ft_in1k .*model\.pretrained=runs/fcmae_",
        "fine-tunes the run folder of a 1600-epoch ImageNet pre-training on 8 GPUs",
        kind="skip",
    ),
    Rule(r"^convnext (evaluate|predict|serve) .*--weights convnext_tiny\.fb_in1k", TINY),
    Rule(
        r"^convnext (serve|evaluate|predict) .*--weights digits\S*\.(onnx|xml|pt2)", "uses a file " + EXPORT
    ),
    Rule(r"^convnext export ", EXPORT),
    Rule(
        r"^convnext benchmark (?!.*--device cuda)",
        "timing rounds of several models; here one short round at batch 2, 64 px",
        add="--batch-size 2 --img-size 64 --repeats 1 --warmup 1",
    ),
    Rule(r"^convnext benchmark .*--device cuda", "needs a CUDA GPU (`make gpu-check` runs it)", kind="cuda"),
    Rule(r"^convnext prepare (imagenet /data/|tiny-imagenet |caltech101 |folders |mnist )", AGAIN),
    Rule(
        r"hf-hub:(timm/|facebook/convnextv2)|^HF_HUB_OFFLINE=1 ",
        AGAIN + "; each hf-hub: repo is a ConvNeXt-atto stand-in in a local Hugging Face cache (every "
        "command runs with HF_HUB_OFFLINE=1: no test reaches the Hub; tests/test_hf_hub.py downloads from "
        "one on 127.0.0.1)",
    ),
    Rule(
        r"^convnext prepare cifar-10 ",
        "CIFAR-10's batches are checked against their published MD5s: only the real 160 MB files pass",
        kind="skip",
    ),
    Rule(r"data\.root='pipe:cat my_data_shards/", AGAIN),  # the shards' train line with a folder runs in CI
    Rule(
        r"^convnext evaluate --weights runs/quickstart_segmentation ",
        "trains the quickstart's run folder first (one epoch of 16 scenes) and starts torch again: "
        "tests/test_segmentation_train.py evaluates a segmentation run folder in CI",
    ),
    Rule(
        r"^convnext evaluate --weights runs/upernet_convnext_",
        "reads the run folder of a 160k-iteration ADE20K training on 8 GPUs "
        "(tests/test_segmentation_train.py evaluates a run folder with --flip, under torchrun too)",
        kind="skip",
    ),
    Rule(
        r"^convnext evaluate --weights runs/maskrcnn_convnext_",
        "reads the run folder of a 36-epoch COCO training on 8 GPUs (tests/test_detection_train.py evaluates "
        "a detection run folder the same way, against pycocotools)",
        kind="skip",
    ),
)

# Every command: a reader's data folders become tiny generated ones of the same layout here.
GLOBAL: tuple[tuple[str, str], ...] = (
    (r"(?<![\w./~-])/data/", "data/"),  # /data/imagenet -> ./data/imagenet (generated by `workspace`)
    (r"~/Downloads/", "Downloads/"),
)
_TRAIN = re.compile(r"(^|\s)(convnext|-m convnext(\.cli\.main)?) train\s")
# The ImageNet recipes are sized for GPUs (batch 128 at 224 px per process): on a machine without one, their
# dry-run's RAM check rightly refuses them where RAM is short (a CI runner, two torchrun processes).
_GPU_RECIPE = re.compile(r"--config convnext_\w+_in(1k|22k|22ft1k)\w*")
_NO_GPU = "train.memory_check=false"


def rule_for(cmd: Command) -> Rule | None:
    found = [r for r in RULES if re.search(r.pattern, cmd.text)]
    assert len(found) <= 1, f"{cmd} matches several RULES: {[r.pattern for r in found]}"
    return found[0] if found else None


def runnable(cmd: Command, port: int | None = None) -> str:
    """The command as run here: the rule's and the global substitutions, --dry-run for training."""
    text = cmd.text
    rule = rule_for(cmd)
    if rule is not None:
        for pattern, repl in rule.sub:
            text, n = re.subn(pattern, repl, text)
            assert n, f"RULES: {pattern!r} no longer matches {cmd}"
        if rule.add:
            text += " " + rule.add
    for pattern, repl in GLOBAL:
        text = re.sub(pattern, repl, text)
    if _TRAIN.search(text) and _GPU_RECIPE.search(text) and not torch.cuda.is_available():
        text += " " + _NO_GPU
    if _TRAIN.search(text) and "--dry-run" not in text:
        text += " --dry-run"
    if port is not None:
        text += f" --host 127.0.0.1 --port {port}"  # never 0.0.0.0, never a port another run holds
    return text


def kind_of(cmd: Command) -> str:
    rule = rule_for(cmd)
    if rule is not None:
        return rule.kind
    return "fast"


def _order(cmds: list[Command]) -> list[Command]:
    """README order, but `convnext export` first: their files feed serve/evaluate/predict lines above them."""
    return sorted(cmds, key=lambda c: 0 if c.text.startswith("convnext export ") else 1)


FAST = [c for c in COMMANDS if kind_of(c) == "fast"]
SLOW = _order([c for c in COMMANDS if kind_of(c) in ("slow", "cuda")])
SKIPPED = [c for c in COMMANDS if kind_of(c) == "skip"]


# ------------------------------------------------------------------------------ the reader's working folder
def _image(path: Path, seed: int, size: int = 40) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _idx_gz(path: Path, arr: np.ndarray) -> None:
    """An MNIST idx file (unsigned bytes), gzipped as downloaded."""
    head = struct.pack(">I", 0x0800 + arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(head + arr.astype(np.uint8).tobytes()))


def _data(work: Path) -> None:
    """The photos, folders and raw dataset layouts the README's commands name, a few small images each."""
    from convnext.data import imagenet1k_wnids

    for i, name in enumerate(
        ("photo.jpg", "photo.png", "figure.JPEG", "more_photos/a.jpg", "more_photos/b.png", "shots/x.png")
    ):
        _image(work / name, i)
    for i in range(4):
        _image(work / "my_photos" / f"p{i}.jpg", 10 + i)
    wnids = imagenet1k_wnids()[:3]
    for split in ("train", "val"):
        for c, (wnid, name) in enumerate(zip(wnids, ("cat", "dog", "fox"))):
            for i in range(2):
                _image(work / "data" / "imagenet" / split / wnid / f"{wnid}_{i}.JPEG", 100 * c + i)
                _image(work / "my_data" / split / name / f"{name}_{i}.jpg", 100 * c + i)
                _image(work / "data" / "ILSVRC2012" / split / wnid / f"{wnid}_{i}.JPEG", 100 * c + i)
                _image(work / "data" / "photos" / name / f"{split}_{i}.jpg", 100 * c + i)
    from imagenet_downloads import write_imagenet_downloads  # ImageNet's three archives, in miniature

    write_imagenet_downloads(
        work / "Downloads" / "ILSVRC2012",
        {w: (work / "data" / "imagenet" / "train" / w / f"{w}_0.JPEG").read_bytes() for w in wnids},
    )
    tiny = work / "data" / "tiny-imagenet-200"
    (tiny / "wnids.txt").parent.mkdir(parents=True)
    (tiny / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for c, wnid in enumerate(wnids):
        _image(tiny / "train" / wnid / "images" / f"{wnid}_0.JPEG", c, 16)
        _image(tiny / "val" / "images" / f"val_{c}.JPEG", 10 + c, 16)
    (tiny / "val" / "val_annotations.txt").write_text(
        "".join(f"val_{c}.JPEG\t{w}\t0\t0\t5\t5\n" for c, w in enumerate(wnids))
    )
    for c in ("accordion", "airplanes"):
        for i in range(5):
            _image(work / "data" / "caltech101" / "101_ObjectCategories" / c / f"image_{i:04d}.jpg", i, 16)
    _segmentation_folders(work)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _idx_gz(
            work / "Downloads" / "mnist" / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28))
        )
        _idx_gz(work / "Downloads" / "mnist" / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 3)


def _segmentation_folders(work: Path) -> None:
    """my_masks/ (images + PNG masks + classes.txt) and data/ADEChallengeData2016/, two images a split."""
    from PIL import Image

    layouts = (
        ("my_masks", "masks", {"train": "train", "val": "val"}),
        ("data/ADEChallengeData2016", "annotations", {"train": "training", "val": "validation"}),
    )
    for i, (root, masks, splits) in enumerate(layouts):
        for split in splits.values():
            for k in range(2):
                _image(work / root / "images" / split / f"{k}.jpg", 300 + 10 * i + k)
                (work / root / masks / split).mkdir(parents=True, exist_ok=True)
                mask = np.random.default_rng(k).integers(0, 3, (40, 40), dtype=np.uint8)
                Image.fromarray(mask).save(work / root / masks / split / f"{k}.png")
    (work / "my_masks" / "classes.txt").write_text("sky\nroad\ncar\n")


def _tiny_state_dict() -> dict[str, torch.Tensor]:
    import convnext

    return convnext.create_model("convnext_tiny", chunked_mlp=False).state_dict()


def _tag_cached(work: Path) -> None:
    """convnext_tiny.fb_in1k in torch.hub's cache ($TORCH_HOME, as a download leaves it): randomly initialised
    ConvNeXt-T weights in the official layout, so the tag resolves offline."""
    from convnext.weights.registry import find_tag

    dst = work / ".torch" / "hub" / "checkpoints" / Path(find_tag("convnext_tiny.fb_in1k").url).name
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _tiny_state_dict()}, dst)


def _timm_file(work: Path) -> None:
    timm = pytest.importorskip("timm")
    torch.save(timm.create_model("convnext_tiny").state_dict(), work / "timm_convnext_tiny.bin")


def _seed_project_file(work: Path) -> None:
    """As the original ConvNext-PyTorch project's train.py saves it (its EMA: AveragedModel's ``module.``)."""
    sd = _tiny_state_dict()
    ema = {f"module.{k}": v for k, v in sd.items()} | {"n_averaged": torch.tensor(3)}
    blob = {"epoch": 90, "best_acc1": torch.tensor(82.0), "state_dict": sd, "ema_state_dict": ema}
    torch.save(blob, work / "ConvNext_tiny-ImageNet_1K.pth.tar")


# What makes a file or folder the commands name, the first time a command reads it (a pattern searched in
# the command as run): big files only for the commands that use them, and each run folder only after the
# README's own training lines for it have been checked (their --dry-run would rightly refuse to resume a
# run folder holding the small stand-in model of another architecture).
ARTEFACTS: dict[str, Callable[[Path], None]] = {}
_MADE = ".made"


def _artefact(pattern: str) -> Callable[[Callable[[Path], None]], Callable[[Path], None]]:
    def register(make: Callable[[Path], None]) -> Callable[[Path], None]:
        ARTEFACTS[pattern] = make
        return make

    return register


_artefact(r"convnext_tiny\.fb_in1k")(_tag_cached)
_artefact(r"timm_convnext_tiny\.bin")(_timm_file)
_artefact(r"ConvNext_tiny-ImageNet_1K\.pth\.tar")(_seed_project_file)


@_artefact(r"upernet_ade20k\.pth|maskrcnn_coco\.pth")
def _dense_checkpoints(work: Path) -> None:
    """The detection and segmentation checkpoints the README names (an official mmseg / mmdet file in
    use): random ConvNeXt-atto UperNet (150 ADE20K classes) and Mask R-CNN (91 COCO labels), mmseg's way."""
    from convnext import create_model

    pairs = (("upernet_ade20k.pth", "upernet_convnext_atto"), ("maskrcnn_coco.pth", "maskrcnn_convnext_atto"))
    for name, arch in pairs:
        torch.save({"state_dict": create_model(arch).state_dict()}, work / name)


@_artefact(r"hf-hub:")
def _hub_cache(work: Path) -> None:
    """The hf-hub: repos the README names, in huggingface_hub's cache layout (models--ORG--NAME/refs/main ->
    snapshots/<commit>/) as a download leaves it, each holding random ConvNeXt-atto weights saved the way
    its library saves them (transformers' save_pretrained, timm's save_for_hf)."""
    import hashlib

    tr, timm = pytest.importorskip("transformers"), pytest.importorskip("timm")
    hf = {"depths": [2, 2, 6, 2], "hidden_sizes": [40, 80, 160, 320], "num_labels": 1000}
    processor = tr.ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875)

    def transformers_repo(v2: bool) -> Callable[[Path], None]:
        def save(folder: Path) -> None:
            cfg = tr.ConvNextV2Config(**hf) if v2 else tr.ConvNextConfig(**hf)
            model = tr.ConvNextV2ForImageClassification(cfg) if v2 else tr.ConvNextForImageClassification(cfg)
            model.save_pretrained(folder)
            processor.save_pretrained(folder)

        return save

    def timm_repo(num_classes: int) -> Callable[[Path], None]:
        def save(folder: Path) -> None:
            model = timm.create_model("convnext_atto", num_classes=num_classes)
            timm.models.save_for_hf(model, folder, safe_serialization=True)

        return save

    repos = {
        "facebook/convnext-tiny-224": transformers_repo(v2=False),
        "facebook/convnextv2-tiny-1k-224": transformers_repo(v2=True),
        "timm/convnext_tiny.in12k_ft_in1k": timm_repo(1000),
        "timm/convnext_tiny.fb_in22k": timm_repo(21841),
    }
    for repo, save in repos.items():
        commit = hashlib.sha1(repo.encode()).hexdigest()
        base = work / ".hf-cache" / f"models--{repo.replace('/', '--')}"
        save(base / "snapshots" / commit)
        (base / "snapshots" / commit / "pytorch_model.bin").unlink(missing_ok=True)
        (base / "refs").mkdir(parents=True)
        (base / "refs" / "main").write_text(commit)


def _env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "WANDB_", "CONVNEXT_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        TORCH_HOME=str(work / ".torch"),  # the download cache: what ARTEFACTS puts there, nothing else
        HF_HUB_CACHE=str(work / ".hf-cache"),  # huggingface_hub's cache, likewise (the hf-hub: repos)
        HF_HUB_OFFLINE="1",  # never the real Hub
        NO_PROXY="127.0.0.1,localhost",
    )
    env.pop("PYTHONPATH", None)
    return env


# The run folders the README's commands name, from short real trainings of the recipes the README trains
# them with: the quickstart as it is (one epoch), the ImageNet recipe on the generated ImageNet folder with a
# small model at 32 px (ConvNeXt-T would write 1.4 GB of checkpoints).
SMALL_MODEL = "model.options={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}"
QUICKSTART = ["--config", "quickstart_digits", "epochs=1"]
TINY_RUN = [
    "--config",
    "convnext_tiny_in1k",
    "data.root=data/imagenet",
    "run.dir=runs/tiny",
    "epochs=1",
    "model.name=convnext_atto",
    SMALL_MODEL,
    "data.img_size=32",
    "train.batch_size=3",
    "train.accum_steps=1",
    "data.workers=0",
    "schedule.warmup_epochs=0",
    "run.loggers=[]",
]


def _train(work: Path, args: list[str]) -> None:
    out = subprocess.run(
        ["convnext", "train", *args, "train.progress=false", "train.threads=1"],
        cwd=work,
        env=_env(work),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert out.returncode == 0, f"training a run folder for the README's commands failed:\n{out.stderr}"


_READS = r"(?<!run\.dir=)"  # a run folder named anywhere but as the run.dir a training line writes


@_artefact(_READS + r"runs/quickstart_digits\b")
def _quickstart_run(work: Path) -> None:
    _train(work, QUICKSTART)


@_artefact(_READS + r"runs/quickstart_fcmae\b")
def _fcmae_run(work: Path) -> None:
    """The pre-training run folder the few-label lines fine-tune: quickstart_fcmae, one step on my_photos."""
    args = ["epochs=1", "schedule.warmup_epochs=0", "data.dataset=images", "data.root=my_photos"]
    args += ["train.batch_size=3", "model.options.decoder_embed_dim=16", "run.loggers=[]"]
    out = subprocess.run(
        ["convnext", "pretrain", "--config", "quickstart_fcmae", *args, "--no-progress"],
        cwd=work,
        env=_env(work),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert out.returncode == 0, f"pre-training a run folder for the README's commands failed:\n{out.stderr}"


@_artefact(_READS + r"runs/tiny\b")
def _tiny_run(work: Path) -> None:
    _train(work, TINY_RUN)


@_artefact(_READS + r"runs/quickstart_detection\b")
def _detection_run(work: Path) -> None:
    """The detector run folder `convnext evaluate` reads: quickstart_detection, one step on 8 scenes."""
    args = ["--config", "quickstart_detection", "epochs=1", "model.pretrained=null", "data.scenes=[8, 4]"]
    _train(work, [*args, "schedule.warmup_epochs=0", "run.loggers=[]"])


@_artefact(_READS + r"runs/quickstart_segmentation\b")
def _segmentation_run(work: Path) -> None:
    """The segmenter run folder `convnext evaluate` reads: quickstart_segmentation, one epoch of 16 scenes."""
    args = ["--config", "quickstart_segmentation", "epochs=1", "data.scenes=[16, 4]", "train.batch_size=8"]
    _train(work, [*args, "schedule.warmup_epochs=0", "run.loggers=[]"])


@_artefact(_READS + r"runs/pets\b")
def _pets_run(work: Path) -> None:
    """The fine-tuned run folder: any classifier run will do; a copy of the quickstart's."""
    _prepare(work, "runs/quickstart_digits")
    shutil.copytree(work / "runs" / "quickstart_digits", work / "runs" / "pets")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("readme")
    assert ROOT not in work.resolve().parents, "the README's commands must run outside the checkout"
    _data(work)
    return work


def _prepare(work: Path, cmd: str) -> None:
    made = work / _MADE
    for pattern, make in ARTEFACTS.items():
        if re.search(pattern, cmd) and pattern not in (made.read_text() if made.exists() else "").split("\n"):
            make(work)
            with open(made, "a") as f:
                f.write(pattern + "\n")


def _run(work: Path, cmd: Command) -> None:
    rule = rule_for(cmd)
    text = runnable(cmd)
    _prepare(work, text)
    if cmd.text.startswith("convnext serve "):
        return _serve(work, cmd)
    out = subprocess.run(
        ["bash", "-c", text], cwd=work, env=_env(work), capture_output=True, text=True, timeout=TIMEOUT_S
    )
    want = rule.rc if rule is not None else 0
    assert out.returncode == want, (
        f"{cmd}\nran as: {text}\nexit {out.returncode} (README: {want})\n"
        f"stdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-3000:]}\n"
        "Make the command work as written, or add a line to RULES in tests/test_readme_commands.py saying "
        "why it cannot run here."
    )


_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never through a proxy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(work: Path, cmd: Command) -> None:
    """Start the server as written (on 127.0.0.1 and a free port), wait for /healthz, ask it what the
    README's curl line asks, then SIGTERM: it must exit 0."""
    port = _free_port()
    text = runnable(cmd, port)
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {text}"],
        cwd=work,
        env=_env(work),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"{cmd}\nran as: {text}\nstopped:\n{proc.communicate()[0][-3000:]}"
            try:
                with _LOCAL.open(f"{base}/healthz", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, f"{cmd}: /healthz never answered 200"
            time.sleep(0.3)
        _prepare(work, "runs/quickstart_digits")  # the README's curl line posts one of its samples
        sample = sorted((work / "runs" / "quickstart_digits" / "samples").glob("*.png"))[0]
        req = urllib.request.Request(
            f"{base}/v1/predict?topk=3", data=sample.read_bytes(), headers={"Content-Type": "image/png"}
        )
        with _LOCAL.open(req, timeout=60) as r:
            body = json.loads(r.read())
        if body.get("task") == "segmentation":  # a segmenter answers with its classes and label map
            assert body["classes"] and body["label_map"], body
        else:
            assert len(body["predictions"]) == 3, body
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode} after SIGTERM\n{out[-3000:]}"


# ------------------------------------------------------------------------------------------------- the tests
def _id(cmd: Command) -> str:
    return f"L{cmd.line}-{cmd.text[:70]}"


@pytest.mark.parametrize("cmd", FAST, ids=_id)
def test_readme_command(workspace: Path, cmd: Command) -> None:
    _run(workspace, cmd)


@pytest.mark.slow
@pytest.mark.parametrize("cmd", SLOW, ids=_id)
def test_slow_readme_command(workspace: Path, cmd: Command) -> None:
    if kind_of(cmd) == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"{rule_for(cmd).why}: {cmd}")
    _run(workspace, cmd)


def test_every_readme_command_is_run_or_skipped_with_a_reason() -> None:
    """The table stays small and true: each rule still matches a README command, each skip says why, and
    the parser finds the commands (a README without them would pass vacuously)."""
    assert len(COMMANDS) >= 30 and any(c.text.startswith("torchrun ") for c in COMMANDS)
    for rule in RULES:
        assert rule.kind in ("fast", "slow", "skip", "cuda"), rule
        assert len(rule.why) > 15, rule
        assert any(re.search(rule.pattern, c.text) for c in COMMANDS), (
            f"RULES: {rule.pattern!r} matches nothing"
        )
    assert sorted(map(str, FAST + SLOW + SKIPPED)) == sorted(map(str, COMMANDS))


def test_commands_are_read_as_a_shell_reads_them() -> None:
    text = (
        "```bash\n"
        "convnext models   # a comment\n"
        "FOO=1 BAR=x \\\n    convnext train --config a 'run.loggers=[a, b]' \"x=#1\"   # why\n"
        "torchrun --nproc_per_node 8 \\\n    -m convnext evaluate --weights w\n"
        "pip install 'convnext[serve]'\n"
        "make demo\n"
        "```\n"
        "convnext outside a block\n"
        "```text\nconvnext in a text block\n```\n"
    )
    got = [c.text for c in readme_commands(text)]
    assert got == [
        "convnext models",
        "FOO=1 BAR=x convnext train --config a 'run.loggers=[a, b]' \"x=#1\"",
        "torchrun --nproc_per_node 8 -m convnext evaluate --weights w",
    ]
    train = Command(1, "convnext train --config finetune_folder data.root=/data/pets")
    assert runnable(train) == "convnext train --config finetune_folder data.root=data/pets --dry-run"
    in1k = runnable(Command(1, "convnext train --config convnext_tiny_in1k"))
    assert in1k.endswith(" --dry-run") and (_NO_GPU in in1k) == (not torch.cuda.is_available())


def test_dry_run_checks_what_a_training_needs(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run is what makes the README's training lines testable, so it must refuse what a training would
    refuse: a missing data folder, a checkpoint to resume that is not there, an unknown weights tag."""
    from convnext.cli.main import main

    monkeypatch.chdir(workspace)
    for args, culprit in (
        (["--config", "finetune_folder", "data.root=no_such_folder"], "data.root"),
        (["--resume", "runs/none/checkpoints/last.pth"], "runs/none/checkpoints/last.pth"),
        (
            ["--config", "finetune_folder", "data.root=my_data", "model.pretrained=convnext_tiny.nope"],
            "pretrained",
        ),
    ):
        assert main(["train", *args, "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert culprit in err and err.count("\n") == 1, err
    assert main(["train", "--config", "finetune_folder", "data.root=my_data", "--dry-run"]) == 0
