"""The training recipe, as every layer reads it: typed sections (``schema``), loaded from YAML with
``inherit:`` and ``key=value`` overrides (``files``), coerced from plain dicts (``coerce``), checked
(``validate``), its paths made absolute (``paths``). Below engine/ and inference/: a run's config.yaml
and checkpoints record it, and evaluate, predict, export read it back without the training code.

Every mistake in a recipe (unknown key, wrong type, value out of range, keys that contradict each other,
missing data folder, a model option the family does not have) is one sentence naming the key, before a model
is built or a file is written."""

from .coerce import build, config_from_dict, dump_yaml, to_dict
from .files import RECIPES_DIR, apply_overrides, bundled_recipes, find_recipe, read_yaml, recipe_summary
from .paths import absolute_paths, rebase_paths
from .schema import (
    CheckpointConfig,
    EmaConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
    TrainLoopConfig,
)
from .validate import check_run_dir, validate

__all__ = [
    "CheckpointConfig",
    "EmaConfig",
    "ModelConfig",
    "OptimConfig",
    "RECIPES_DIR",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "TrainLoopConfig",
    "absolute_paths",
    "apply_overrides",
    "build",
    "bundled_recipes",
    "check_run_dir",
    "config_from_dict",
    "dump_yaml",
    "find_recipe",
    "read_yaml",
    "rebase_paths",
    "recipe_summary",
    "to_dict",
    "validate",
]
