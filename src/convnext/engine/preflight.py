"""What a run will do on this machine, decided before any work: the precision it trains in on this CPU,
whether a training step fits the device's memory, and which checkpoint of the run folder it continues.

``convnext train`` and ``convnext train --dry-run`` call the same functions, so a dry run refuses what the run
would refuse (a resume of another model, an image size that cannot be allocated) and says what it would do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..recipe import TrainConfig, to_dict
from ..recipe.validate import meta_model

# ----------------------------------------------------------------------------------------------- precision


def train_amp(
    cfg: TrainConfig, device: torch.device, flags: frozenset[str] | None = None
) -> tuple[str, str | None]:
    """The precision a run trains in (``none``/``bf16``/``fp16``) and the line that says why, when it is not
    ``train.amp``.

    ``train.amp: bf16`` on a CPU without native bf16 (no AVX512-BF16, AMX or Arm BF16) trains in fp32: there
    bf16 is emulated and slower than fp32, and the paper recipes ask for bf16 for speed, not for its
    rounding. ``train.emulated_bf16=true`` keeps bf16 anyway. ``flags``: the CPU's feature flags (default:
    this machine's, ``convnext.models.cpu.cpu_flags``), so that both cases can be checked on any host."""
    from ..models.cpu import cpu_has_native_bf16

    amp = cfg.train.amp
    if amp != "bf16" or device.type != "cpu" or cfg.train.emulated_bf16 or cpu_has_native_bf16(flags):
        return amp, None
    return "none", (
        "train.amp=bf16 runs in fp32 on this CPU: it has no native bf16 (no AVX512-BF16 or AMX), where bf16 "
        "is emulated and slower than fp32; train.emulated_bf16=true keeps bf16"
    )


# ----------------------------------------------------------------------------------------------- memory

_GIB = 2**30


def _fmt(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", _GIB), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 2**20:.2f} MiB"


def estimate_step_memory(cfg: TrainConfig, amp: str) -> int:
    """Bytes one training step of ``cfg`` takes on its device, roughly: the weights with their gradients,
    optimizer state and EMA copy, and the activations autograd keeps for the backward pass.

    The activations are counted, not guessed: the recipe's model runs once on the meta device (shapes only,
    no memory, even at 20000 px) and every leaf module's output is summed, per image, at ``data.img_size``;
    x ``train.batch_size``, x 4 bytes in fp32 and 2 under bf16/fp16 autocast. Against a measured CPU step
    (ConvNeXt-atto/T, fp32 and bf16, with and without the chunked MLP) this is 1.2-2x the real growth of the
    process: an upper estimate, right in its order of magnitude, which is what refusing needs."""
    model = meta_model(cfg.model.name.partition(".")[0], cfg.model)
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    total = [0]

    def count(_m: Any, _i: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            total[0] += out.numel()

    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        model.train()
        size, images = cfg.data.img_size, 1
        if hasattr(model, "rpn"):  # a detector: backbone + FPN at its largest training size (not the heads)
            t = model.transform
            model.backbone(torch.empty(1, 3, max(t.min_size), t.max_size, device="meta"))
        else:
            images = 2  # UperNet's BatchNorm after its 1x1 pooling needs two values per channel in training
            model(torch.empty(images, 3, size, size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    per_image = total[0] // images
    if cfg.model.grad_checkpointing:  # the blocks keep their inputs only (~1 of the ~11 tensors of a block)
        per_image //= 8
    half = amp in ("bf16", "fp16")
    activations = per_image * cfg.train.batch_size * (2 if half else 4)
    params = sum(p.numel() for p in model.parameters())
    copies = 2 + (2 if cfg.optim.name == "adamw" else 1) + (1 if cfg.ema.enabled else 0)  # weights, grads
    weights = params * 4 * copies + (params * 2 if half else 0)  # + autocast's cast of the weights
    return activations + weights


def device_memory(device: torch.device) -> tuple[int, str] | None:
    """The memory a run on ``device`` can have and what it is: the GPU's, or this machine's RAM (the
    cgroup's limit when a container or a job scheduler sets a lower one); None where it cannot be read."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(props.total_memory), f"{props.name}'s memory"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return None
    what = "this machine's RAM"
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = int(Path(limit).read_text().strip())
        except (OSError, ValueError):  # absent, or "max": no limit
            continue
        if 0 < value < total:
            total, what = value, "this container's memory limit"
        break
    return total, what


def check_step_memory(
    cfg: TrainConfig, device: torch.device, amp: str, available: tuple[int, str] | None = None
) -> str | None:
    """Refuse (one sentence) a training step estimated to need more than the device has; returns the line
    a dry run prints. ``available``: (bytes, what) instead of reading this machine (tests).

    The device is the one the run uses (``train.device``, ``auto``: CUDA when present): the paper recipes
    are per-GPU batches and fit a 32 GB GPU, but not all of them a laptop's RAM. Under torchrun on CPU the
    processes of a node share its RAM. ``train.memory_check=false`` skips the check."""
    if not cfg.train.memory_check:
        return None
    have = available if available is not None else device_memory(device)
    if have is None:
        return None
    need = estimate_step_memory(cfg, amp)
    if device.type == "cpu":
        need *= max(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), 1)
    total, what = have
    precision = {"none": "fp32", "bf16": "bf16", "fp16": "fp16"}[amp]
    if need > total:
        raise UserError(
            f"config key data.img_size={cfg.data.img_size} with train.batch_size={cfg.train.batch_size} "
            f"needs about {_fmt(need)} for a training step of {cfg.model.name} in {precision} on "
            f"{device.type}, more than {what} ({_fmt(total)}); lower data.img_size or train.batch_size "
            "(train.accum_steps keeps the effective batch), or set train.memory_check=false to try anyway"
        )
    return (
        f"a training step needs about {_fmt(need)} ({precision} on {device.type}) of {what} ({_fmt(total)})"
    )


# ----------------------------------------------------------------------------------------------- resume


def check_resumable(cfg: TrainConfig, ckpt: dict, path: Path) -> None:
    """A checkpoint only continues the model it holds: same architecture and constructor options."""
    saved = ckpt.get("config", {}).get("model", {})
    now = to_dict(cfg.model)
    if saved.get("name") and saved["name"].partition(".")[0] != cfg.model.name.partition(".")[0]:
        raise UserError(
            f"config key model.name is {cfg.model.name} but checkpoint {path} holds a {saved['name']}; "
            "resume with the same model, or start a new run (another run.dir, or --fresh)"
        )
    if "options" in saved and saved["options"] != now["options"]:
        raise UserError(
            f"config key model.options is {now['options']} but checkpoint {path} was trained with "
            f"{saved['options']}; resume with the same options, or start a new run (another run.dir, or "
            "--fresh)"
        )


def resume_changes(cfg: TrainConfig, ckpt: dict, path: Path) -> list[str]:
    """Lines saying what the resumed run does differently from the run that wrote ``ckpt``: a new
    ``epochs`` reshapes the cosine schedule from the checkpoint's step on (the lr is a function of step /
    total steps), which would otherwise change the run's lr silently."""
    saved = ckpt.get("config") or {}
    old, new = saved.get("epochs"), cfg.epochs
    done = int(ckpt.get("epoch", 0))
    if old is None or int(old) == new or new <= done or cfg.schedule.name != "cosine":
        return []
    how = "stretches" if new > int(old) else "shrinks"
    return [
        f"warning: epochs {old} -> {new} since checkpoint {path}: the cosine lr schedule {how} to {new} "
        f"epochs from step {int(ckpt.get('step', 0))} on (epochs={old} keeps the run's schedule)"
    ]


def check_resume_classes(cfg: TrainConfig, ckpt: dict, path: Path) -> None:
    """The class count a run would find against the checkpoint's, without scanning the images: the
    recipe's ``model.num_classes``, or the class folders of an image folder's training split (the real run
    compares the class names once its dataset is built)."""
    names = ckpt.get("class_names")
    head = (ckpt.get("model") or {}).get("head.weight")
    held = len(names) if names else (int(head.shape[0]) if head is not None else None)
    if held is None:
        return
    want: int | None = cfg.model.num_classes
    where = f"model.num_classes={want}"
    d = cfg.data
    if want is None and d.dataset == "imagefolder" and d.root:
        from ..data import resolve_class_list

        split_dir = Path(d.root).expanduser() / d.train_split
        if split_dir.is_dir():
            folders = sorted(
                e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")
            )
            spec = d.class_list
            if spec is None and (Path(d.root).expanduser() / "classes.txt").is_file():
                spec = str(Path(d.root).expanduser() / "classes.txt")
            want = len(resolve_class_list(spec, folders))
            where = f"data.root={d.root} has {want}"
    if want is not None and want != held:
        raise UserError(
            f"checkpoint {path} was trained on {held} classes but {where} classes; resume with the same "
            "data, or start a new run (another run.dir, or --fresh)"
        )


def find_resume(cfg: TrainConfig, resume: str | Path | None, fresh: bool) -> Path | None:
    """The checkpoint a run of ``cfg`` would continue (``--resume``, else the run folder's newest intact
    one unless ``fresh`` or ``run.auto_resume=false``), without taking the folder's lock or changing it."""
    from .checkpoint import CheckpointManager

    if resume is not None:
        return Path(resume)
    if fresh or not cfg.run.auto_resume:
        return None
    folder = Path(cfg.run.dir).expanduser() / "checkpoints"
    return CheckpointManager(folder, keep_last=cfg.checkpoint.keep_last).find_resumable()


def dry_run(cfg: TrainConfig, *, resume: str | Path | None = None, fresh: bool = False) -> list[str]:
    """``convnext train --dry-run``: the checks of a real run on this machine, without data, weights or a
    file written. Returns the lines to print (what the run would do); raises UserError where it would stop."""
    from ..device import resolve_device
    from .checkpoint import load_train_checkpoint

    lines: list[str] = []
    device = resolve_device(cfg.train.device, what="config key train.device")
    amp, why = train_amp(cfg, device)
    if why:
        lines.append(why)
    path = find_resume(cfg, resume, fresh)
    if path is not None:
        ckpt = load_train_checkpoint(path, mmap=True)
        check_resumable(cfg, ckpt, path)
        check_resume_classes(cfg, ckpt, path)
        epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        if epoch >= cfg.epochs:
            lines.append(f"{path} has already completed {epoch} of {cfg.epochs} epochs: nothing to train")
            return lines
        lines += resume_changes(cfg, ckpt, path)
        lines.append(f"would resume {path} at epoch {epoch + 1} of {cfg.epochs} (optimizer step {step})")
    else:
        run_dir = Path(cfg.run.dir).expanduser()
        from .rundir import RunFolder

        aside = " (moving the earlier run's files aside)" if RunFolder(run_dir).previous_run() else ""
        lines.append(f"would start a new run in {run_dir}{aside}")
    memory = check_step_memory(cfg, device, amp)
    if memory:
        lines.append(memory)
    return lines
