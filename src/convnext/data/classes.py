"""Class lists: the class index comes from a list, never from whichever folders happen to exist.

ImageNet-1k checkpoints (every ecosystem) use the 1000 synsets in sorted-wnid order; the package ships that
list (``imagenet_synsets.txt``, one ``wnid name, synonym, ...`` per line, line i = class i), so a folder of
100 of the 1000 classes still maps each wnid folder to its true index.

ImageNet-22k heads (21841 classes: the official ConvNeXt 22k checkpoints, timm's ``*.fb_in22k``) use the
21841 synsets of ImageNet's fall 2011 release in sorted-wnid order (what ``ImageFolder`` gives on it; timm's
``ImageNetInfo("imagenet22k")``). ``imagenet22k_synsets.tsv.gz`` ships them, one ``wnid<TAB>words`` per
line, line i = class i; taken from timm 1.0 (``timm/data/_info/imagenet22k_synsets.txt`` and
``imagenet_synset_to_lemma.txt``, Apache-2.0; the words are WordNet 3.0's lemmas, WordNet licence).
"""

from __future__ import annotations

import gzip
import re
from functools import lru_cache
from pathlib import Path

from ..errors import UserError

_SYNSETS = Path(__file__).with_name("imagenet_synsets.txt")
_SYNSETS_22K = Path(__file__).with_name("imagenet22k_synsets.tsv.gz")
IMAGENET22K_CLASSES = 21841
# timm's ImageNet-12k (the in12k heads): 11821 of the 22k synsets, in timm's order (imagenet12k_synsets.txt,
# from timm 1.0's data/_info, Apache-2.0); their words are the 22k table's
_SYNSETS_12K = Path(__file__).with_name("imagenet12k_synsets.txt")
IMAGENET12K_CLASSES = 11821
_WNID = re.compile(r"^n\d{8}$")

#: ``class_list`` values with a meaning of their own (anything else is a file path).
IMAGENET1K = "imagenet1k"
FOLDERS = "folders"  # sorted folder names, even when they are all ImageNet wnids


@lru_cache(maxsize=1)
def _synset_lines() -> tuple[tuple[str, str], ...]:
    rows = []
    for line in _SYNSETS.read_text(encoding="utf-8").splitlines():
        if line.strip():
            wnid, _, desc = line.strip().partition(" ")
            rows.append((wnid, desc.strip()))
    if len(rows) != 1000:  # a broken install, not a user error
        raise RuntimeError(f"{_SYNSETS} has {len(rows)} synsets instead of 1000")
    return tuple(rows)


def imagenet1k_classes() -> list[tuple[str, str]]:
    """The 1000 ImageNet-1k classes in class-index order as (wnid, human name), e.g. ("n01440764", "tench").

    The human name is the first synonym of the synset; ``imagenet1k_descriptions()`` has all of them.
    """
    return [(wnid, desc.split(",")[0].strip()) for wnid, desc in _synset_lines()]


def imagenet1k_descriptions() -> list[str]:
    """Full synonym lists in class-index order, e.g. "tench, Tinca tinca"."""
    return [desc for _, desc in _synset_lines()]


def imagenet1k_wnids() -> list[str]:
    return [wnid for wnid, _ in _synset_lines()]


@lru_cache(maxsize=1)
def _wnid_index() -> dict[str, int]:
    return {w: i for i, w in enumerate(imagenet1k_wnids())}


def is_imagenet_wnid(name: str) -> bool:
    return name in _wnid_index()


@lru_cache(maxsize=1)
def _synset_lines_22k() -> tuple[tuple[str, str], ...]:
    text = gzip.decompress(_SYNSETS_22K.read_bytes()).decode("utf-8")
    rows = tuple(tuple(line.split("\t", 1)) for line in text.splitlines() if line.strip())
    if len(rows) != IMAGENET22K_CLASSES:  # a broken install, not a user error
        raise RuntimeError(f"{_SYNSETS_22K} has {len(rows)} synsets instead of {IMAGENET22K_CLASSES}")
    return rows  # type: ignore[return-value]


def imagenet22k_wnids() -> list[str]:
    """The 21841 ImageNet-22k synsets in class-index order (sorted wnids)."""
    return [wnid for wnid, _ in _synset_lines_22k()]


def imagenet22k_descriptions() -> list[str]:
    """WordNet's words for each ImageNet-22k class in class-index order, e.g. "organism, being"."""
    return [desc for _, desc in _synset_lines_22k()]


def imagenet12k_descriptions() -> list[str]:
    """WordNet's words for each class of timm's ImageNet-12k heads, in class-index order."""
    words = dict(_synset_lines_22k())
    return [words[wnid] for wnid in _SYNSETS_12K.read_text(encoding="utf-8").split()]


@lru_cache(maxsize=1)
def wnid_descriptions() -> dict[str, str]:
    """Words for every ImageNet wnid we ship (22k's and 1k's; 1k's own wording where both have one), so a
    checkpoint that names its classes by wnid prints words."""
    return {**dict(_synset_lines_22k()), **dict(_synset_lines())}


def default_class_names(num_classes: int) -> list[str] | None:
    """Short names for a head that carries none, by its size: ImageNet-1k's for 1000 classes, ImageNet-22k's
    (first word of each synset) for 21841, else None (nothing can say what its classes are)."""
    if num_classes == 1000:
        return [name for _, name in imagenet1k_classes()]
    if num_classes == IMAGENET22K_CLASSES:
        return [desc.split(",")[0].strip() for desc in imagenet22k_descriptions()]
    if num_classes == IMAGENET12K_CLASSES:
        return [desc.split(",")[0].strip() for desc in imagenet12k_descriptions()]
    return None


def default_descriptions(num_classes: int) -> list[str]:
    """Full words to print for a head that carries no names: ImageNet-1k's or -22k's by its size, else
    "class N"."""
    if num_classes == 1000:
        return imagenet1k_descriptions()
    if num_classes == IMAGENET22K_CLASSES:
        return imagenet22k_descriptions()
    if num_classes == IMAGENET12K_CLASSES:
        return imagenet12k_descriptions()
    return [f"class {i}" for i in range(num_classes)]


def looks_like_wnid(name: str) -> bool:
    """A WordNet id (n + 8 digits), whether or not it is one of the 1000 ImageNet-1k classes."""
    return bool(_WNID.match(name))


def read_class_list(path: str | Path) -> list[str]:
    """One class per line (blank lines and ``#`` comments skipped; only the first word of a line counts,
    so ImageNet-style ``wnid name, synonym`` files work as they are)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(
            f"config key data.class_list: file {p} does not exist (give a file with one class per line, "
            f"'{IMAGENET1K}' or '{FOLDERS}')"
        )
    names: list[str] = []
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line.split()[0] if looks_like_wnid(line.split()[0]) else line)
    if not names:
        raise UserError(f"config key data.class_list: file {p} lists no classes")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"config key data.class_list: file {p} lists class {dup[0]!r} more than once")
    return names


def resolve_class_list(spec: str | None, folders: list[str]) -> list[str]:
    """The class names in index order for a split whose class folders are ``folders``.

    ``spec``: None (auto: the ImageNet-1k list when every folder is an ImageNet-1k wnid, else the sorted
    folders), "imagenet1k", "folders", or a file. Every folder must be in the list; classes of the list
    with no folder are fine (a subset of the classes, e.g. a 100-class sample of ImageNet val).
    """
    folders = sorted(folders)
    if spec is None:
        spec = IMAGENET1K if folders and all(is_imagenet_wnid(f) for f in folders) else FOLDERS
    if spec == FOLDERS:
        return folders
    if spec == IMAGENET1K:
        names = imagenet1k_wnids()
        source = "the ImageNet-1k synset list"
    else:
        names = read_class_list(spec)
        source = f"class list {spec}"
    known = set(names)
    missing = [f for f in folders if f not in known]
    if missing:
        raise UserError(
            f"class folder {missing[0]!r} is not in {source} ({len(missing)} folder(s) are not); "
            f"fix the folder name or the class list (data.class_list)"
        )
    return names
