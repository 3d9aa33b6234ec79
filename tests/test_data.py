"""Data pipeline: class lists, datasets from every raw layout, transforms, loaders, bad data."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SYNSETS

import convnext.data.classes
from convnext.data import imagenet1k_classes, resolve_class_list
from convnext.errors import UserError


# ---------------------------------------------------------------------------------------------- classes
def test_shipped_synsets_equal_shared_list() -> None:
    shipped = Path(convnext.data.classes.__file__).with_name("imagenet_synsets.txt")
    assert shipped.read_text() == SYNSETS.read_text()
    classes = imagenet1k_classes()
    assert len(classes) == 1000 and classes[0] == ("n01440764", "tench")
    assert classes[999][0] == "n15075141"


def test_subset_of_imagenet_maps_to_true_indices(imagenet_sample: Path) -> None:
    folders = [p.name for p in imagenet_sample.iterdir() if p.is_dir()]
    lines = [ln.split()[0] for ln in SYNSETS.read_text().splitlines()]
    for spec in (None, "imagenet1k"):
        names = resolve_class_list(spec, folders)
        assert len(names) == 1000
        assert names.index("n01440764") == 0
        assert all(names.index(f) == lines.index(f) for f in folders)
    assert resolve_class_list("folders", folders) == sorted(folders)


def test_class_list_file(tmp_path: Path) -> None:
    f = tmp_path / "classes.txt"
    f.write_text("zebra\n# comment\napple\n\nmango\n")
    assert resolve_class_list(str(f), ["apple", "zebra"]) == ["zebra", "apple", "mango"]
    with pytest.raises(UserError, match="class folder 'kiwi' is not in class list"):
        resolve_class_list(str(f), ["apple", "kiwi"])
    with pytest.raises(UserError, match="does not exist"):
        resolve_class_list(str(tmp_path / "nope.txt"), ["apple"])
    f.write_text("a\nb\na\n")
    with pytest.raises(UserError, match="more than once"):
        resolve_class_list(str(f), ["a"])
    with pytest.raises(UserError, match="not in the ImageNet-1k synset list"):
        resolve_class_list("imagenet1k", ["n01440764", "cats"])
