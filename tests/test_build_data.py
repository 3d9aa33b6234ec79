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


@pytest.mark.parametrize(
    ("task", "override", "text"),
    [
        (
            "segmentation",
            "data.digit_size=[40, 30]",
            r"data.digit_size=\[40, 30\]: the digits' side must lie in",
        ),
        ("detection", "data.scene_digits=0", "data.scene_digits=0: a scene holds at least one digit"),
    ],
)
def test_digit_scene_options_are_one_sentence(task: str, override: str, text: str) -> None:
    recipe, overrides, _ = TASKS[task]
    with pytest.raises(UserError, match=text):
        build_data(load_config(recipe, [*overrides, override]), None, None, 1)


def test_digit_size_and_count_shape_the_scenes() -> None:
    from convnext.data.digit_scenes import digit_scene

    counts = set()
    for i in range(40):
        _, digits = digit_scene(i, size=64, max_digits=2, digit_size=(24, 30))
        counts.add(len(digits))
        for d in digits:  # the ink's box lies inside the digit's square of 24-30 px
            assert d.box[2] - d.box[0] <= 30 and d.box[3] - d.box[1] <= 30
            assert max(d.box[2] - d.box[0], d.box[3] - d.box[1]) >= 12
    assert counts == {1, 2}
