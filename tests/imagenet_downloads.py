"""ImageNet-1k's three downloads in miniature (for test_prepare and the README's commands): the archives as
image-net.org serves them, built from a few given photos."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_devkit(path: Path, id_to_wnid: dict[int, str], truth: list[int]) -> Path:
    """ILSVRC2012_devkit_t12.tar.gz: meta.mat (leaf synsets plus a parent, as the real one has 1860 synsets
    of which 1000 leaves) and the ground truth, under ILSVRC2012_devkit_t12/data/."""
    from scipy.io import savemat

    fields = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    rec = np.zeros(len(id_to_wnid) + 1, dtype=fields)
    for k, (i, w) in enumerate(id_to_wnid.items()):
        rec[k] = (i, w, "words", 0)
    rec[-1] = (len(id_to_wnid) + 1, "n00001740", "entity", 3)  # not a class: only num_children == 0 are
    buf = io.BytesIO()
    savemat(buf, {"synsets": rec})
    top = "ILSVRC2012_devkit_t12/data/"
    return write_tar(
        path,
        {
            f"{top}meta.mat": buf.getvalue(),
            f"{top}ILSVRC2012_validation_ground_truth.txt": "".join(f"{t}\n" for t in truth).encode(),
        },
        "w:gz",
    )


def write_imagenet_downloads(src: Path, photos: dict[str, bytes], junk: bool = True) -> None:
    """ILSVRC2012_img_train.tar (one <wnid>.tar of 2 images per class of ``photos``; with ``junk`` the
    second class also holds a file that is not an image), ILSVRC2012_img_val.tar (4 images) and the devkit,
    whose ids are not the sorted-wnid order: id 1 is the 3rd class, 2 the 1st, 3 the 2nd."""
    wnids = sorted(photos)[:3]
    inner = {}
    for w in wnids:
        files = {f"{w}_{10 + i}.JPEG": photos[w] for i in range(2)}
        if junk and w == wnids[1]:
            files[f"{w}_99.JPEG"] = b"<html>not found</html>"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        inner[f"{w}.tar"] = buf.getvalue()
    write_tar(src / "ILSVRC2012_img_train.tar", inner)
    truth = [2, 3, 1, 2]  # image k+1 has devkit id truth[k]
    id_to_wnid = {1: wnids[2], 2: wnids[0], 3: wnids[1]}
    write_tar(
        src / "ILSVRC2012_img_val.tar",
        {f"ILSVRC2012_val_{k + 1:08d}.JPEG": photos[id_to_wnid[t]] for k, t in enumerate(truth)},
    )
    write_devkit(src / "ILSVRC2012_devkit_t12.tar.gz", id_to_wnid, truth)
