"""Every task's data ends the same way (engine/train/setup.py ``loaders``): the checks a user meets before a
run starts read the same for a classifier, a segmenter and a detector."""

from __future__ import annotations

from pathlib import Path

import pytest

from convnext.engine.config import load_config
from convnext.engine.train.setup import build_data
from convnext.errors import UserError

TASKS = {
    "classify": ("quickstart_digits", [], "classes"),
    "segmentation": ("quickstart_segmentation", ["data.scenes=[16, 4]"], "classes"),
    "detection": ("quickstart_detection", ["data.scenes=[16, 4]", "data.scene_size=64"], "categories"),
}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("task", list(TASKS))
def test_a_batch_larger_than_the_data_is_one_sentence(task: str) -> None:
    recipe, overrides, _ = TASKS[task]
    cfg = load_config(recipe, [*overrides, "train.batch_size=5000"])
    with pytest.raises(UserError, match=r"train.batch_size=5000 x train.accum_steps=1 is more than the \d+"):
        build_data(cfg, None, None, 1)


@pytest.mark.parametrize("task", list(TASKS))
def test_resuming_on_other_classes_is_one_sentence(task: str, tmp_path: Path) -> None:
    recipe, overrides, what = TASKS[task]
    cfg = load_config(recipe, overrides)
    data = build_data(cfg, None, None, 1)
    assert data.steps_per_epoch >= 1 and data.val_loader is not None
    ckpt = {"class_names": ["cat", "dog"]}
    with pytest.raises(UserError, match=f"checkpoint {tmp_path}/last.pth was trained on other {what} than"):
        build_data(cfg, ckpt, tmp_path / "last.pth", 1)

