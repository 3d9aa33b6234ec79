"""``convnext prepare``: a raw dataset layout -> ImageFolder (DST/{train,val}/<class>/<file>, classes.txt).
Which datasets, and how each is read, is catalog.py's: a raw layout's files are linked, arrays written.

JPEGs are never decoded: files are hard-linked (default; instant, no extra space, falls back to a copy
across file systems), copied, or symlinked. ImageNet's archives as downloaded are read once as streams and
each image written straight to its class folder (imagenet_archives.py): no extraction beside them, so no
second copy of the dataset. MNIST/CIFAR (arrays) are written as PNG. classes.txt holds the
class list in index order; build_dataset reads it, so the prepared folder keeps the dataset's own class
index (e.g. Tiny-ImageNet's 200 wnids are not re-mapped to ImageNet-1k's 1000).

Nothing is written before the whole source is read and checked: each layout's signature (ImageNet: wnid
class folders or flat val images with devkit/LOC labels, the archives' headers and free space for their
images; Tiny-ImageNet: wnids.txt and train/<wnid>/images; MNIST: four valid idx files; CIFAR: every batch's
MD5), every listed file present. (Inside an archive, an image that is not one is known only when it is
read: it is left out and named at the end.) A failure while writing
(or Ctrl-C) removes every file and folder this run created and nothing else, so DST never holds a half
dataset that a later ``train`` would read as complete. Files already in DST with the same size are kept
(a second run adds only what is missing).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Container, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from ..errors import UserError
from ..messages import note, warn
from .catalog import DatasetSpec, find_preparable

if TYPE_CHECKING:
    from .imagenet_archives import Readable, Source

LINKS = ("hard", "copy", "symlink")


def _safe(name: str) -> str:
    """A class name usable as a folder name ("T-shirt/top" -> "T-shirt_top")."""
    return "".join("_" if ch in '/\\:*?"<>|' else ch for ch in name).strip() or "_"


class _Writer:
    """Creates folders and files under DST and remembers which ones this run created, to remove exactly
    those (and nothing that was there before) when the run fails."""

    def __init__(self) -> None:
        self.dirs: list[Path] = []
        self.files: list[Path] = []
        self._known: set[Path] = set()

    def mkdir(self, folder: Path) -> None:
        if folder in self._known:
            return
        missing = []
        p = folder
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir()
            self.dirs.append(d)
        self._known.add(folder)

    def place(self, src: str, dst: Path, link: str) -> None:
        if dst.is_file() and not dst.is_symlink() and dst.stat().st_size == os.path.getsize(src):
            return  # from an earlier run
        if dst.exists() or dst.is_symlink():
            dst.unlink()  # a different (stale) file of an earlier run: replaced, not ours to remove later
        else:
            self.files.append(dst)
        if link == "hard":
            try:
                os.link(src, dst)
                return
            except OSError:  # another file system, or links not allowed: copy instead
                pass
        if link == "symlink":
            os.symlink(os.path.abspath(src), dst)
            return
        shutil.copy2(src, dst)

    def write_stream(self, data: Readable, size: int, dst: Path) -> str | None:
        """An image read from an archive, written under a temporary name and renamed (a kill never leaves
        a torn file that a later run would keep as done). None when written or already there from an
        earlier run (same size: the stream is not read); else why it is left out ("not an image")."""
        if dst.is_file() and not dst.is_symlink() and dst.stat().st_size == size:
            return None
        from .images import sniff_image

        head = data.read(32)
        if not head:
            return "empty file"
        if sniff_image(head) is None:
            return "not an image"
        self.mkdir(dst.parent)  # only now: a class of nothing but non-images gets no (empty) folder
        tmp = dst.with_name(f".{dst.name}.tmp")
        if not (dst.exists() or dst.is_symlink()):
            self.files.append(dst)
        try:
            with open(tmp, "wb") as f:
                f.write(head)
                shutil.copyfileobj(data, f, 1 << 20)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        return None

    def write_png(self, arr: np.ndarray, dst: Path) -> None:
        """Atomically (a temporary name, then a rename): a kill never leaves a torn PNG that a later run
        would keep as done."""
        from PIL import Image

        if dst.exists():
            return
        tmp = dst.with_name(f".{dst.name}.tmp")
        self.files.append(dst)
        try:
            Image.fromarray(arr).save(tmp, "PNG")
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)

    def write_text(self, dst: Path, text: str) -> None:
        if not dst.exists():
            self.files.append(dst)
        dst.write_text(text, encoding="utf-8")

    def undo(self) -> None:
        for f in reversed(self.files):
            try:
                f.unlink(missing_ok=True)
            except OSError:
                pass
        for d in reversed(self.dirs):
            try:
                d.rmdir()  # only if empty: a file put there by someone else stays
            except OSError:
                pass


def _check_dst(src: Path, dst: Path) -> None:
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise UserError(f"destination {dst} must not be the source folder {src} or inside it")
    if dst.exists() and not dst.is_dir():
        raise UserError(f"destination {dst} is a file, not a folder")


def _check_no_foreign_files(dst: Path, planned: Mapping[str, Container[str]]) -> None:
    """Refuse split folders holding files this run would not write (a preparation with another seed,
    val fraction or dataset): a second run only adds what is missing, so they would stay, counted in the
    splits (an image in both train and val, classes mixed) while the summary counts only this run's.
    ``planned``: per split, the files this run writes as ``<class>/<file>`` (strings: ImageNet has 1.3M;
    for the class archives of ImageNet's train split, whose files are known only once read, their name
    pattern ``<wnid>/<wnid>_*``)."""
    foreign: list[str] = []
    for split, files_of_split in sorted(planned.items()):
        top = os.path.join(dst, split)
        for folder, dirs, files in os.walk(top):
            dirs.sort()
            rel = os.path.relpath(folder, top)
            foreign += [
                os.path.join(folder, n)
                for n in sorted(files)
                if not n.startswith(".") and os.path.join(rel, n) not in files_of_split
            ]
    if foreign:
        raise UserError(
            f"destination {dst} already holds {len(foreign)} file(s) this preparation does not write (e.g. "
            f"{foreign[0]}): it was prepared from another source or with another --seed/--val-fraction; "
            "remove it or choose another folder"
        )


def _read_files(
    spec: DatasetSpec, src: Path, val_fraction: float, seed: int, streams: dict[str, Source] | None = None
) -> tuple[dict[str, list[tuple[str, str]]], list[str], list[tuple[str, str]], list[str]]:
    """Every split's (file, class) after the layout's checks, the class list, the files left out (not
    images) and the layout's notes (each once). Reads and checks only. ``streams``: the splits read from
    archives (a split wholly from its archive is left out here; the layout skips the classes streamed)."""
    from .file_datasets import scan_files

    streams = streams or {}
    plan: dict[str, list[tuple[str, str]]] = {}
    classes: list[str] = []
    notes: list[str] = []
    for split in spec.splits(src) if spec.splits is not None else ("train", "val"):
        source = streams.get(split)
        if source is not None and source.whole:
            classes = source.classes
            continue
        extra = {"streamed": frozenset(source.wnids if source else ())} if spec.archives else {}
        raw = spec.read(src, split, val_fraction=val_fraction, seed=seed, **extra)
        notes += [n for n in raw.notes if n not in notes]
        classes = raw.classes
        missing = [p for p, _ in raw.samples if not os.path.exists(p)]
        if missing:
            raise UserError(
                f"{spec.name}: {missing[0]} is listed but does not exist ({len(missing)} missing)"
            )
        plan[split] = raw.samples
    skipped: list[tuple[str, str]] = []
    for split, samples in plan.items():
        index = {c: i for i, c in enumerate(classes)}
        good, bad = scan_files(
            [(p, index[c]) for p, c in samples], strict=False, check_headers=True, max_pixels=0
        )
        keep = {p for p, _ in good}
        plan[split] = [(p, c) for p, c in samples if p in keep]
        skipped += bad
    return plan, classes, skipped, notes


class _ClassPrefix:
    """The files a class archive may write, known only once it is read: ``<wnid>/<wnid>_*`` (ImageNet's
    train naming) for its wnids; plus an exact set (the folders read as files beside them)."""

    def __init__(self, wnids: list[str], exact: set[str]) -> None:
        self.wnids, self.exact = set(wnids), exact

    def __contains__(self, rel: object) -> bool:
        w, _, name = str(rel).partition(os.sep)
        return rel in self.exact or (w in self.wnids and name.startswith(f"{w}_"))


def _check_space(dst: Path, streams: dict[str, Source]) -> None:
    """Refuse before writing when DST's file system cannot take the archives' images (less what an earlier
    run wrote): a full disk two hours into ImageNet would remove it all again."""
    need = sum(s.nbytes for s in streams.values())
    for split, s in streams.items():
        for w in s.wnids:
            folder = dst / split / w
            if folder.is_dir():
                need -= sum(e.stat().st_size for e in os.scandir(folder) if e.is_file(follow_symlinks=False))
    base = dst
    while not base.exists():
        base = base.parent
    free = shutil.disk_usage(base).free
    if need > free:
        raise UserError(
            f"destination {dst} needs about {need / 1e9:.1f} GB for the images in the archives, and its "
            f"file system has {free / 1e9:.1f} GB free"
        )


def _write_streams(
    w: _Writer, dst: Path, split: str, source: Source, progress: bool, skipped: list[tuple[str, str]]
) -> int:
    """Every image of ``source`` into DST/<split>/<wnid>/, the archive read once; the number of images."""
    from . import imagenet_archives as ia

    n = 0
    note(
        f"imagenet {split}: reading {source.path} as it is ({len(source.wnids)} classes, "
        f"{source.nbytes / 1e9:.1f} GB), no extraction"
    )
    with tqdm(
        total=source.nbytes, unit="B", unit_scale=True, desc=f"imagenet {split}", disable=not progress
    ) as bar:
        for wnid, name, size, data in ia.images(source, bar.update):
            if not name or name.startswith("."):
                continue
            why = w.write_stream(data, size, dst / split / wnid / name)
            if why is None:
                n += 1
            else:
                skipped.append((f"{source.path}:{wnid}/{name}", why))
    return n


def _read_arrays(spec: DatasetSpec, src: Path) -> tuple[dict[str, tuple[np.ndarray, list[int]]], list[str]]:
    """Every split's (images (N, H, W[, 3]) uint8, targets) and the class names. Reads and checks only."""
    assert spec.arrays is not None
    plan = {}
    classes: list[str] = []
    for split, train in (("train", True), ("val", False)):
        images, targets, classes = spec.arrays(src, train)
        plan[split] = (images, targets)
    return plan, classes


def prepare(
    dataset: str,
    src: str | Path,
    dst: str | Path,
    *,
    link: str = "hard",
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, int]:
    """Write the ImageFolder; returns the number of images per split. ``link``: hard (hard links, a copy
    across file systems), copy or symlink (ignored for MNIST/CIFAR, which become PNG files)."""
    spec = find_preparable(dataset)
    dataset = spec.name
    if link not in LINKS:
        raise UserError(f"--link {link!r} is not one of {', '.join(LINKS)}")
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_dir():
        raise UserError(f"source folder {src} does not exist")
    _check_dst(src, dst)
    w = _Writer()
    if spec.arrays is not None:  # images in memory: written as PNG files
        arrays, classes = _read_arrays(spec, src)
        names = [_safe(c) for c in classes]
        _check_no_foreign_files(
            dst,
            {
                split: {os.path.join(names[t], f"{i:05d}.png") for i, t in enumerate(targets)}
                for split, (_, targets) in arrays.items()
            },
        )
        try:
            counts = {}
            for split, (images, targets) in arrays.items():
                for t in sorted(set(targets)):  # only classes with images: an empty class folder is an error
                    w.mkdir(dst / split / names[t])
                for i in tqdm(
                    range(len(targets)), desc=f"{dataset} {split}", unit="img", disable=not progress
                ):
                    w.write_png(images[i], dst / split / names[targets[i]] / f"{i:05d}.png")
                counts[split] = len(targets)
            w.write_text(dst / "classes.txt", "".join(f"{c}\n" for c in names))
        except BaseException:
            w.undo()
            raise
        return counts
    streams = spec.archives(src) if spec.archives is not None else {}
    plan, classes, skipped, notes = _read_files(spec, src, val_fraction, seed, streams)
    planned: dict[str, set[str] | _ClassPrefix] = {
        split: {os.path.join(_safe(c), os.path.basename(p)) for p, c in samples}
        for split, samples in plan.items()
    }
    for split, source in streams.items():
        exact = planned.get(split, set())
        assert isinstance(exact, set)
        planned[split] = source.names if source.names is not None else _ClassPrefix(source.wnids, exact)
    _check_no_foreign_files(dst, planned)
    if streams:
        _check_space(dst, streams)
    for line in notes:
        note(line)
    _say_skipped(skipped)
    skipped = []
    try:
        counts = {}
        for split in ("train", "val"):
            samples = plan.get(split, [])
            for path, c in tqdm(samples, desc=f"{dataset} {split}", unit="img", disable=not progress):
                folder = dst / split / _safe(c)
                w.mkdir(folder)
                w.place(path, folder / os.path.basename(path), link)
            if split in plan:
                counts[split] = len(samples)
            if split in streams:
                counts[split] = len(samples) + _write_streams(
                    w, dst, split, streams[split], progress, skipped
                )
        w.mkdir(dst)
        w.write_text(dst / "classes.txt", "".join(f"{c}\n" for c in classes))
    except BaseException:
        w.undo()
        raise
    _say_skipped(skipped)
    return counts


def _say_skipped(skipped: list[tuple[str, str]]) -> None:
    if skipped:
        shown = ", ".join(p for p, _ in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        warn(f"left out {len(skipped)} file(s) that are not images: {shown}")
