"""ImageNet-1k as downloaded: ``ILSVRC2012_img_train.tar`` (one ``<wnid>.tar`` per class, each holding
``<wnid>_<n>.JPEG``), ``ILSVRC2012_img_val.tar`` (50,000 flat ``ILSVRC2012_val_<n>.JPEG``) and
``ILSVRC2012_devkit_t12.tar.gz`` (the val labels), read as streams.

torchvision's ImageNet (``parse_train_archive``/``parse_val_archive``) extracts each archive next to itself
and then unpacks or moves the files: the dataset twice on disk (~150 GB more) and a half-extracted source
folder when it is interrupted; its ``parse_devkit_archive`` extracts to a temporary folder and writes a
pickle-free but torch-saved ``meta.bin`` into the source folder. None of it fits a read-only source, so
here each archive is read once, front to back (tarfile's streaming mode ``'r|'``, the inner tars as
streams of the outer one) and every image goes straight to its class folder; nothing is extracted
anywhere else. The devkit keeps torchvision's semantics: meta.mat's leaf synsets (``num_children == 0``)
map the ILSVRC2012_ID on line n of the ground truth (image ``ILSVRC2012_val_<n>``) to its wnid, whose
order is NOT the sorted-wnid class index of every checkpoint.

Before anything is written, the outer archives' headers are read (seeking over the data: 1000 headers for
train, 50,000 for val), so a truncated download, a member that is not a class archive, or a val image
without a label is refused up front.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from ..errors import UserError
from . import layouts
from .classes import imagenet1k_wnids, is_imagenet_wnid
from .imagenet_devkit import DEVKIT_TAR, TRAIN_TAR, VAL_TAR  # noqa: F401 (the archives' names, here too)

_END = 2 * tarfile.BLOCKSIZE  # every complete tar ends with two zero blocks
_BUFSIZE = 1 << 16
_VAL_NUMBER = re.compile(r"_(\d+)\.\w+$")


def val_number(name: str) -> int | None:
    """The image number of ``ILSVRC2012_val_00000042.JPEG`` (42): line 42 of the ground truth."""
    m = _VAL_NUMBER.search(os.path.basename(name))
    return int(m.group(1)) if m else None


# ------------------------------------------------------------------------------------------ the archives
def class_tar_wnid(name: str) -> str | None:
    """``n01440764.tar`` (a member of the train archive, or a file of its extracted folder) -> its wnid."""
    base = os.path.basename(name)
    stem, ext = os.path.splitext(base)
    return stem if ext == ".tar" and is_imagenet_wnid(stem) else None


def _damaged(path: object, e: object) -> UserError:
    return UserError(f"ImageNet: {path} cannot be read ({e}): a damaged or incomplete download?")


def _headers(path: Path) -> list[tarfile.TarInfo]:
    """The regular members of ``path`` from its headers only (tarfile seeks over the data); a download
    cut short (no end-of-archive blocks, a cut header or member) is refused here."""
    try:
        with tarfile.open(path, "r:") as tf:
            members = tf.getmembers()
            end = tf.offset
    except (tarfile.TarError, EOFError, OSError) as e:
        raise _damaged(path, e) from None
    if end + _END > path.stat().st_size:
        raise _damaged(path, "it ends without the end-of-archive blocks")
    return [m for m in members if m.isreg()]


@dataclass
class Source:
    """One split's images to stream: ``kind`` "train" (the archive of class tars), "classes" (a folder of
    class tars: the train archive extracted once) or "val"; ``wnids`` the classes present; ``names`` the
    files it writes as ``<wnid>/<file>`` when known before reading (val), else None; ``nbytes`` its size."""

    split: str
    kind: str
    path: Path
    wnids: list[str]
    nbytes: int
    names: set[str] | None = None
    labels: dict[int, str] | None = None
    tars: list[Path] | None = None

    @property
    def whole(self) -> bool:
        """The split comes from the archive alone (not a folder of class tars, beside which extracted class
        folders are read as files)."""
        return self.kind != "classes"

    @property
    def classes(self) -> list[str]:
        return imagenet1k_wnids()


def scan_train_archive(path: Path) -> Source:
    members = _headers(path)
    odd = [m.name for m in members if class_tar_wnid(m.name) is None]
    if odd:
        raise UserError(
            f"ImageNet: {path} holds {odd[0]}, not a <wnid>.tar of an ImageNet-1k class "
            f"({len(odd)} such member(s)): is it ILSVRC2012_img_train.tar?"
        )
    if not members:
        raise UserError(f"ImageNet: {path} holds no class archives")
    wnids = sorted({str(class_tar_wnid(m.name)) for m in members})
    return Source("train", "train", path, wnids, sum(m.size for m in members))


def scan_class_tars(folder: Path) -> Source | None:
    """A folder of ``<wnid>.tar`` files (the train archive extracted once, not yet unpacked per class);
    None when it holds none."""
    tars = sorted(folder / e.name for e in os.scandir(folder) if e.is_file() and class_tar_wnid(e.name))
    if not tars:
        return None
    wnids = [str(class_tar_wnid(p.name)) for p in tars]
    return Source("train", "classes", folder, wnids, sum(p.stat().st_size for p in tars), tars=tars)


def scan_val_archive(path: Path, labels: dict[int, str], source: str) -> Source:
    names: set[str] = set()
    nbytes = 0
    for m in _headers(path):
        n = val_number(m.name)
        if n is None or n not in labels:
            raise UserError(f"ImageNet: image {m.name} of {path} has no label in {source}")
        w = labels[n]
        if not is_imagenet_wnid(w):
            raise UserError(f"ImageNet: {source} labels {m.name} with {w}, which is not an ImageNet-1k class")
        names.add(os.path.join(w, os.path.basename(m.name)))
        nbytes += m.size
    if not names:
        raise UserError(f"ImageNet: {path} holds no images")
    wnids = sorted({n.split(os.sep)[0] for n in names})
    return Source("val", "val", path, wnids, nbytes, names=names, labels=labels)


# ------------------------------------------------------------------------------------------- streaming
class Readable(Protocol):
    """What a member's data is: read front to back, never seeked."""

    def read(self, n: int = -1, /) -> bytes: ...


class _Counted(io.RawIOBase):
    """A file read front to back that reports each read's size (the progress bar)."""

    def __init__(self, f: IO[bytes], tick: Callable[[int], object]) -> None:
        self.f, self.tick = f, tick

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        n = self.f.readinto(b) or 0  # type: ignore[attr-defined]
        self.tick(n)
        return n


class _Data:
    """A member's data stream whose read errors (a tar cut short inside the member) name the archive."""

    def __init__(self, f: Readable, where: object) -> None:
        self.f, self.where = f, where

    def read(self, n: int = -1, /) -> bytes:
        try:
            return self.f.read(n)
        except (tarfile.TarError, EOFError) as e:
            raise _damaged(self.where, e) from None


def _stream(fileobj: Readable, size: int, where: object) -> Iterator[tuple[tarfile.TarInfo, Readable]]:
    """The regular members of a tar read as a stream (mode 'r|'), each with its data as a stream; a tar cut
    short is refused (the data of each member is checked by tarfile, the end blocks here)."""
    try:
        with tarfile.open(fileobj=fileobj, mode="r|", bufsize=_BUFSIZE) as tf:  # type: ignore[call-overload]
            for m in tf:
                data = tf.extractfile(m) if m.isreg() else None
                if data is not None:
                    yield m, _Data(data, where)
            end = tf.offset
    except (tarfile.TarError, EOFError) as e:
        raise _damaged(where, e) from None
    if end + _END > size:
        raise _damaged(where, "it ends without the end-of-archive blocks")


def images(src: Source, tick: Callable[[int], object]) -> Iterator[tuple[str, str, int, Readable]]:
    """(wnid, file name, size, data stream) of every image of ``src``, in archive order. Each stream must
    be read (or left) before the next item: the archive is read once, front to back."""
    if src.kind == "classes":
        for p in src.tars or []:
            with open(p, "rb") as f:
                wnid = str(class_tar_wnid(p.name))
                raw = io.BufferedReader(_Counted(f, tick), 1 << 20)
                for m, data in _stream(raw, p.stat().st_size, p):
                    yield wnid, os.path.basename(m.name), m.size, data
        return
    with open(src.path, "rb") as f:
        raw = io.BufferedReader(_Counted(f, tick), 1 << 20)
        for m, data in _stream(raw, src.path.stat().st_size, src.path):
            if src.kind == "val":
                w = (src.labels or {}).get(val_number(m.name) or 0)
                if w is None:  # scan_val_archive found a label for every image: the archive changed since
                    raise UserError(f"ImageNet: {src.path} changed while it was read ({m.name})")
                yield w, os.path.basename(m.name), m.size, data
                continue
            wnid = class_tar_wnid(m.name)
            if wnid is None:  # not there when scanned: the archive changed since
                raise UserError(f"ImageNet: {src.path} changed while it was read ({m.name})")
            for inner, img in _stream(data, m.size, f"{src.path}:{m.name}"):
                yield wnid, os.path.basename(inner.name), inner.size, img


# ---------------------------------------------------------------------------------------- what to read
def find_archives(src: Path) -> dict[str, Source]:
    """The ImageNet splits read from archives, headers checked (nothing written): ILSVRC2012_img_train.tar
    when there is no extracted train folder, a train folder of <wnid>.tar files (the outer archive
    extracted, the classes not yet), ILSVRC2012_img_val.tar (with the devkit or LOC labels) when there is
    no extracted val folder."""
    if (src / "wnids.txt").is_file():
        return {}  # Tiny-ImageNet: layouts.imagenet names it
    out: dict[str, Source] = {}
    folder = layouts._imagenet_dir(src, "train")
    archive = layouts.imagenet_archive(src, "train")
    if folder is not None:
        tars = scan_class_tars(folder)
        if tars is not None:
            out["train"] = tars
    elif archive is not None:
        out["train"] = scan_train_archive(archive)
    archive = layouts.imagenet_archive(src, "val")
    if layouts._imagenet_dir(src, "val") is None and archive is not None:
        found = layouts.imagenet_val_labels(src)
        if found is None:
            raise UserError(
                f"ImageNet: {archive} needs its labels: put ILSVRC2012_devkit_t12.tar.gz (as downloaded) or "
                f"Kaggle's LOC_val_solution.csv in {src}"
            )
        out["val"] = scan_val_archive(archive, *found)
    return out
