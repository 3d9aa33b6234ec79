"""A run's recipe on this machine: a bundled recipe or file with overrides (:func:`load_config`), or the one
a checkpoint carries when resuming (:func:`resolve_config`), each checked before any work.

The recipe itself (schema, files, coercion, validation, paths) is :mod:`convnext.recipe`, below engine/ so
that inference reads a run's recipe without the training code."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..recipe import (
    TrainConfig,
    absolute_paths,
    apply_overrides,
    build,
    config_from_dict,
    read_yaml,
    validate,
)


def load_config(
    path: str | Path | None,
    overrides: list[str] = (),
    *,
    check_paths: bool = True,
    resuming: bool | None = None,
) -> TrainConfig:
    """Read, override, type-check and validate a recipe. Raises UserError before any work is done.

    With ``check_paths`` (a run on this machine) the paths become absolute (:func:`absolute_paths`).
    ``resuming``: a checkpoint will be restored (see :func:`validate`); None: when ``run.dir`` holds one
    and ``run.auto_resume`` is on, as ``train`` decides without ``--fresh``."""
    raw = read_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, list(overrides))
    cfg = build(TrainConfig, raw, "")
    data_raw = raw.get("data")
    if not (isinstance(data_raw, dict) and "crop_mode" in data_raw) and cfg.data.img_size >= 384:
        # unset: the official evaluation, which warps the whole image at 384 px and up (build_transform)
        cfg.data.crop_mode = "squash"
    if resuming is None:
        from .rundir import has_checkpoint

        resuming = check_paths and cfg.run.auto_resume and has_checkpoint(Path(cfg.run.dir).expanduser())
    validate(cfg, check_paths=check_paths, resuming=resuming)
    if check_paths:
        absolute_paths(cfg)
    return cfg


def resolve_config(
    config: str | None,
    overrides: list[str] | None = None,
    resume: str | Path | None = None,
    *,
    fresh: bool = False,
) -> TrainConfig:
    """The run's config: the recipe ``config`` (a bundled name or a file) with ``overrides``, else the
    resolved recipe ``resume``'s checkpoint carries (``convnext train --resume last.pth`` needs no more).
    ``fresh``: the run starts over (``--fresh``), so ``model.pretrained`` must be there even when the run
    folder holds a checkpoint.

    Here, not in train.py, so that ``convnext train --dry-run`` resolves a recipe without the training
    loop (only a resume reads a checkpoint)."""
    if config:
        return load_config(config, overrides or [], resuming=True if resume else False if fresh else None)
    if resume is None:
        raise UserError(
            "pass --config NAME (a bundled recipe, `convnext recipes` lists them, or a YAML file), or "
            "--resume PATH to continue a run"
        )
    from .checkpoint import load_train_checkpoint

    cfg = config_from_dict(apply_overrides(load_train_checkpoint(resume)["config"], overrides or []))
    validate(cfg, resuming=True)
    absolute_paths(cfg)  # an override typed now (data.root=moved_data) is relative to this folder
    return cfg
