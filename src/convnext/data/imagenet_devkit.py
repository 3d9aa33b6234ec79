"""ImageNet-1k's download names and its devkit's val labels, below both readers of the layout.

``layouts.py`` (which finds the ImageNet folders, archives and label files) and ``imagenet_archives.py``
(which streams the archives, and asks ``layouts`` where they are) both need these; here they import from
one file below them instead of from each other.

The devkit keeps torchvision's semantics: meta.mat's leaf synsets (``num_children == 0``) map the
ILSVRC2012_ID on line n of the ground truth (image ``ILSVRC2012_val_<n>``) to its wnid, whose order is NOT
the sorted-wnid class index of every checkpoint.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from ..errors import UserError

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT_TAR = "ILSVRC2012_devkit_t12.tar.gz"
_META = "data/meta.mat"
_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
_MAX_DEVKIT_FILE = 64 << 20  # the real meta.mat is ~2 MB, the ground truth ~200 KB


def parse_meta_mat(data: bytes | str | os.PathLike, source: str) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid of the 1000 leaf synsets of the devkit's meta.mat (scipy.io, as torchvision)."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise UserError("ImageNet: reading the devkit's meta.mat needs scipy (pip install scipy)") from None
    try:
        f = io.BytesIO(data) if isinstance(data, bytes) else os.fspath(data)
        syn = loadmat(f, squeeze_me=True)["synsets"]
        fields = syn.dtype.names or ()
        if "ILSVRC2012_ID" not in fields or "WNID" not in fields:
            raise ValueError("no ILSVRC2012_ID/WNID fields in its synsets")
        rows = syn.reshape(-1)
        leaves = [r for r in rows if "num_children" not in fields or int(r["num_children"]) == 0]
        out = {int(r["ILSVRC2012_ID"]): str(r["WNID"]) for r in leaves}
    except UserError:
        raise
    except Exception as e:  # a damaged or foreign .mat: scipy raises many kinds
        raise UserError(
            f"ImageNet: {source} is not the devkit's meta.mat ({type(e).__name__}: {e})"
        ) from None
    return out


def parse_ground_truth(text: str, source: str, id_to_wnid: dict[int, str]) -> dict[int, str]:
    """Validation image number -> wnid: line n of the ground truth is the ILSVRC2012_ID of image n."""
    labels = {}
    for n, token in enumerate(text.split(), start=1):
        try:
            i = int(token)
        except ValueError:
            raise UserError(f"ImageNet: line {n} of {source} is {token!r}, not a class id") from None
        if i not in id_to_wnid:
            raise UserError(f"ImageNet: line {n} of {source} has class id {i}, which meta.mat does not list")
        labels[n] = id_to_wnid[i]
    if not labels:
        raise UserError(f"ImageNet: {source} lists no labels")
    return labels


def devkit_archive_labels(path: Path) -> dict[int, str]:
    """The val labels from ``ILSVRC2012_devkit_t12.tar.gz`` as downloaded: its two data files are read
    into memory (size checked first), nothing is extracted."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tf:
            for m in tf:
                name = m.name.replace("\\", "/")
                for key in (_META, _TRUTH):
                    if m.isreg() and (name == key or name.endswith("/" + key)):
                        if m.size > _MAX_DEVKIT_FILE:
                            raise UserError(f"ImageNet: {path}: {m.name} is {m.size} bytes, not the devkit's")
                        found[key] = tf.extractfile(m).read()  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"ImageNet: {path} cannot be read ({e}): a damaged or incomplete download?") from None
    for key in (_META, _TRUTH):
        if key not in found:
            raise UserError(f"ImageNet: {path} has no {key} (is it ILSVRC2012_devkit_t12.tar.gz?)")
    ids = parse_meta_mat(found[_META], f"{path}:{_META}")
    return parse_ground_truth(found[_TRUTH].decode("utf-8", "replace"), f"{path}:{_TRUTH}", ids)
