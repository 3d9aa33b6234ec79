"""The recipe's paths: made absolute when a run starts, rebased for a run recorded before they were."""

from __future__ import annotations

import os
from pathlib import Path

from .schema import TrainConfig


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def absolute_paths(cfg: TrainConfig) -> None:
    """The recipe's paths made absolute against the working folder of the command that typed them
    (``data.root``, a ``data.class_list`` file, ``model.pretrained`` when it is a file or folder,
    ``run.dir``).

    The resolved recipe is stored in the run's config.yaml and checkpoints and read later from anywhere:
    ``convnext evaluate --weights runs/pets`` in another folder, an exported file's validation split, a
    ``--resume`` from a job script. A relative ``data.root=my_data`` there would name another folder."""
    from ..weights.registry import find_tag

    d = cfg.data
    if d.root:
        d.root = _absolute(d.root)
    if d.class_list not in (None, "imagenet1k", "folders"):
        d.class_list = _absolute(d.class_list)
    src = cfg.model.pretrained
    if src and find_tag(src) is None and "://" not in src and Path(src).expanduser().exists():
        cfg.model.pretrained = _absolute(src)
    cfg.run.dir = _absolute(cfg.run.dir)


def rebase_paths(cfg: TrainConfig, run_dir: Path) -> TrainConfig:
    """A run recorded before paths were stored absolute, found at ``run_dir``: its relative ``data.root`` and
    ``data.class_list`` were typed in the folder its relative ``run.dir`` was, which ``run_dir`` reveals
    (``runs/pets`` found at /home/me/project/runs/pets: /home/me/project)."""
    rel = Path(cfg.run.dir)
    here = Path(os.path.abspath(run_dir))
    n = len(rel.parts)
    if rel.is_absolute() or n == 0 or ".." in rel.parts or here.parts[-n:] != rel.parts:
        return cfg
    base = Path(*here.parts[:-n])
    d = cfg.data
    if d.root and not Path(d.root).expanduser().is_absolute():
        d.root = str(base / d.root)
    listed = d.class_list not in (None, "imagenet1k", "folders")
    if listed and not Path(d.class_list).expanduser().is_absolute():
        d.class_list = str(base / d.class_list)
    return cfg
