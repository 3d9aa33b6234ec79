"""Few labels: ``data.labels_per_class=N`` keeps N images of every class of the training split, drawn by a
seeded permutation per class (as :func:`~convnext.data.layouts.seeded_split` draws the val split), so the
subset depends only on (dataset, N, seed): every rank and every resume train on the same images."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ..errors import UserError


class LabelledSubset(Dataset):
    """``ds`` restricted to ``indices``, keeping what the loop reads of a dataset (classes, targets,
    skipped); torch's ``Subset`` drops them."""

    def __init__(self, ds: Dataset, indices: list[int]) -> None:
        self.ds, self.indices = ds, list(indices)
        self.classes = list(ds.classes)  # type: ignore[attr-defined]
        all_targets = ds.targets  # type: ignore[attr-defined]
        self.targets = [int(all_targets[i]) for i in self.indices]
        self.skipped = getattr(ds, "skipped", [])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.ds[self.indices[index]]


def labels_per_class(ds: Dataset, n: int, seed: int) -> LabelledSubset:
    """The first ``n`` of a seeded permutation of each class's indices (classes in index order; one
    generator for all, seeded once). One sentence when a class has fewer than ``n`` images."""
    if not hasattr(ds, "targets") or not hasattr(ds, "__getitem__"):
        raise UserError(
            f"config key data.labels_per_class: the dataset ({type(ds).__name__}) streams its images with no "
            "list of labels to draw from; use an image folder or a catalog dataset"
        )
    targets = np.asarray(ds.targets, dtype=np.int64)  # type: ignore[attr-defined]
    classes = list(ds.classes)  # type: ignore[attr-defined]
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for c in range(len(classes)):
        members = np.flatnonzero(targets == c)
        if len(members) < n:
            raise UserError(
                f"config key data.labels_per_class={n}: class {classes[c]!r} has only {len(members)} "
                "training image(s)"
            )
        keep += members[rng.permutation(len(members))[:n]].tolist()
    return LabelledSubset(ds, sorted(keep))
