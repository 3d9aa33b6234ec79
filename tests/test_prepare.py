"""Raw dataset layouts (synthetic replicas in tmp_path) read directly and through `convnext prepare`."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from imagenet_downloads import write_imagenet_downloads, write_tar

from convnext.cli.main import main as cli
from convnext.data import DataConfig, build_dataset, imagenet1k_wnids
from convnext.data.prepare import prepare
from convnext.errors import UserError


def _jpeg(path: Path, seed: int = 0, size: int = 12) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, "JPEG")
    return path


def _prepared(dst: Path, split: str) -> dict[str, list[str]]:
    return {d.name: sorted(f.name for f in d.iterdir()) for d in sorted((dst / split).iterdir())}


def test_tiny_imagenet(tmp_path: Path) -> None:
    src = tmp_path / "tiny-imagenet-200"
    wnids = ["n02124075", "n01443537"]
    (src / "val" / "images").mkdir(parents=True)
    src.joinpath("wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        for i in range(2):
            _jpeg(src / "train" / w / "images" / f"{w}_{i}.JPEG", i)
        (src / "train" / w / f"{w}_boxes.txt").write_text("boxes\n")
    rows = [("val_0.JPEG", wnids[0]), ("val_1.JPEG", wnids[1]), ("val_2.JPEG", wnids[0])]
    for i, (f, _) in enumerate(rows):
        _jpeg(src / "val" / "images" / f, 10 + i)
    (src / "val" / "val_annotations.txt").write_text("".join(f"{f}\t{w}\t0\t0\t5\t5\n" for f, w in rows))

    raw = build_dataset(DataConfig(dataset="tiny-imagenet", root=str(tmp_path)), "val", None)
    assert raw.classes == sorted(wnids) and len(raw) == 3
    assert [t for _, t in raw.samples] == [1, 0, 1]  # sorted wnids: n01443537 -> 0

    dst = tmp_path / "out"
    assert prepare("tiny-imagenet", src, dst, progress=False) == {"train": 4, "val": 3}
    assert _prepared(dst, "val") == {"n01443537": ["val_1.JPEG"], "n02124075": ["val_0.JPEG", "val_2.JPEG"]}
    assert (dst / "val" / "n02124075" / "val_0.JPEG").stat().st_ino == (
        src / "val/images/val_0.JPEG"
    ).stat().st_ino
    # classes.txt keeps Tiny-ImageNet's own 200-class index instead of auto-mapping wnids to ImageNet-1k
    ds = build_dataset(DataConfig(root=str(dst)), "val", None)
    assert ds.classes == sorted(wnids) and sorted(t for _, t in ds.samples) == [0, 1, 1]
    assert prepare("tiny-imagenet", src, dst, progress=False)["val"] == 3  # a second run is harmless


def _meta_mat(path: Path, id_to_wnid: dict[int, str]) -> None:
    from scipy.io import savemat

    rec = np.zeros(len(id_to_wnid), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
    for k, (i, w) in enumerate(id_to_wnid.items()):
        rec[k] = (i, w, "words")
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"synsets": rec})


def test_imagenet_val_from_devkit_and_loc_csv(tmp_path: Path) -> None:
    wn = imagenet1k_wnids()
    # the devkit's ILSVRC2012_IDs are not the sorted-wnid order: id 1 is wnid #449, id 2 is #0, id 3 is #999
    id_to_wnid = {1: wn[449], 2: wn[0], 3: wn[999]}
    src = tmp_path / "imagenet"
    truth = [2, 3, 1, 2]  # image k+1 has devkit id truth[k]
    for k in range(4):
        _jpeg(src / "val" / f"ILSVRC2012_val_{k + 1:08d}.JPEG", k)
    data = src / "ILSVRC2012_devkit_t12" / "data"
    _meta_mat(data / "meta.mat", id_to_wnid)
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{t}\n" for t in truth))

    ds = build_dataset(DataConfig(dataset="imagenet", root=str(src)), "val", None)
    assert len(ds.classes) == 1000 and [t for _, t in ds.samples] == [0, 999, 449, 0]

    dst = tmp_path / "out"
    assert prepare("imagenet", src, dst, link="copy", progress=False) == {"val": 4}  # val only: fine
    for k, i in enumerate((5, 5, 998)):
        _jpeg(src / "train" / wn[i] / f"{wn[i]}_{k}.JPEG", k)
    tr = build_dataset(DataConfig(dataset="imagenet", root=str(src)), "train", None)
    assert sorted(t for _, t in tr.samples) == [5, 5, 998] and len(tr.classes) == 1000
    assert prepare("imagenet", src, dst, progress=False) == {"train": 3, "val": 4}
    assert _prepared(dst, "val")[wn[0]] == ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000004.JPEG"]
    img = (dst / "val" / wn[449] / "ILSVRC2012_val_00000003.JPEG").read_bytes()
    assert img == (src / "val" / "ILSVRC2012_val_00000003.JPEG").read_bytes()  # bytes as they were
    ds = build_dataset(DataConfig(root=str(dst)), "val", None)
    assert sorted(t for _, t in ds.samples) == [0, 0, 449, 999]

    # Kaggle: ILSVRC/Data/CLS-LOC/val + LOC_val_solution.csv
    kag = tmp_path / "kaggle"
    for k in range(2):
        _jpeg(kag / "ILSVRC" / "Data" / "CLS-LOC" / "val" / f"ILSVRC2012_val_{k + 1:08d}.JPEG", k)
    (kag / "LOC_val_solution.csv").write_text(
        f"ImageId,PredictionString\nILSVRC2012_val_00000002,{wn[7]} 1 2 3 4 {wn[7]} 5 6 7 8\n"
        f"ILSVRC2012_val_00000001,{wn[3]} 1 2 3 4\n"
    )
    ds = build_dataset(DataConfig(dataset="imagenet", root=str(kag)), "val", None)
    assert [t for _, t in ds.samples] == [3, 7]
    (kag / "LOC_val_solution.csv").unlink()
    with pytest.raises(UserError, match="no labels were found: put the devkit"):
        build_dataset(DataConfig(dataset="imagenet", root=str(kag)), "val", None)


def test_caltech_seeded_split(tmp_path: Path) -> None:
    src = tmp_path / "caltech"
    for c, n in (("BACKGROUND_Google", 3), ("accordion", 10), ("airplanes", 5)):
        for i in range(n):
            _jpeg(src / "101_ObjectCategories" / c / f"image_{i:04d}.jpg", i)
    cfg = DataConfig(dataset="caltech101", root=str(src), val_fraction=0.2)
    tr, va = build_dataset(cfg, "train", None), build_dataset(cfg, "val", None)
    assert tr.classes == ["accordion", "airplanes"] and (len(tr), len(va)) == (12, 3)
    assert not {p for p, _ in tr.samples} & {p for p, _ in va.samples}
    again = build_dataset(cfg, "val", None)
    assert again.samples == va.samples
    other = build_dataset(DataConfig(dataset="caltech101", root=str(src), split_seed=1), "val", None)
    assert other.samples != va.samples

    dst = tmp_path / "out"
    assert cli(["prepare", "caltech101", str(src), str(dst), "--val-fraction", "0.4", "--no-progress"]) == 0
    assert sum(len(v) for v in _prepared(dst, "val").values()) == 6
    assert sorted(_prepared(dst, "train")) == ["accordion", "airplanes"]


def test_mini_imagenet_pools_disjoint_fewshot_splits(
    tmp_path: Path, capsys, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "mini"
    rows = {"train": ["n01532829", "n01558993"], "val": ["n01855672"], "test": ["n01930112"]}
    k = 0
    for split, classes in rows.items():
        lines = ["filename,label"]
        for c in classes:
            for i in range(5):
                name = f"{c}{i:08d}.jpg"
                _jpeg(src / "images" / name, k)
                k += 1
                lines.append(f"{name},{c}")
        (src / f"{split}.csv").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.INFO, logger="convnext"):  # a note (convnext.messages): logging's INFO
        tr = build_dataset(DataConfig(dataset="mini-imagenet", root=str(src)), "train", None)
        assert "disjoint classes" in caplog.text
        assert len(tr.classes) == 4 and len(tr) == 16
        caplog.clear()
        for split in ("val", "train", "val"):  # `convnext train` builds val, train, val: said once
            build_dataset(DataConfig(dataset="mini-imagenet", root=str(src)), split, None)
    assert "disjoint classes" not in caplog.text
    dst = tmp_path / "out"
    assert prepare("mini-imagenet", src, dst, progress=False) == {"train": 16, "val": 4}
    capsys.readouterr()
    assert cli(["prepare", "mini-imagenet", str(src), str(tmp_path / "o2"), "--no-progress"]) == 0
    assert capsys.readouterr().err.count("disjoint classes") == 1


def _idx(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack(">I", 0x0800 + arr.ndim))  # idx magic: unsigned bytes, ndim dimensions
        f.write(struct.pack(f">{arr.ndim}I", *arr.shape))
        f.write(arr.astype(np.uint8).tobytes())


def test_mnist_from_torchvision_files_and_cifar_offline_error(tmp_path: Path) -> None:
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 3)
    ds = build_dataset(DataConfig(dataset="mnist", root=str(tmp_path / "mnist")), "val", None)
    assert len(ds) == 4 and ds.classes[:3] == ["0", "1", "2"]
    img, y = ds[1]
    assert img.shape == (3, 28, 28) and img.dtype == torch.uint8 and y == 1
    dst = tmp_path / "out"
    assert prepare("mnist", tmp_path / "mnist", dst, progress=False) == {"train": 6, "val": 4}
    back = build_dataset(DataConfig(root=str(dst)), "val", None)
    assert torch.equal(back.load(0)[0], ds[0][0]) and back.classes[:2] == ["0", "1"]  # PNG is lossless

    with pytest.raises(
        UserError,
        match=r"dataset CIFAR10 is not in .*cifar: put cifar-10-batches-py/ .* there \(data.download=true",
    ):
        build_dataset(DataConfig(dataset="cifar10", root=str(tmp_path / "cifar")), "train", None)
    assert cli(["prepare", "cifar10", str(tmp_path), str(tmp_path / "o2"), "--no-progress"]) == 2


def test_prepare_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli(["prepare", "caltech256", str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    assert "source folder" in capsys.readouterr().err
    with pytest.raises(UserError, match="must not be the source folder"):
        prepare("caltech101", tmp_path, tmp_path / "inside")
    with pytest.raises(UserError, match="Caltech-101: .*101_ObjectCategories does not exist"):
        prepare("caltech101", tmp_path, tmp_path.parent / f"{tmp_path.name}_o")
    tiny = tmp_path / "tiny"
    (tiny / "val" / "images").mkdir(parents=True)
    (tiny / "wnids.txt").write_text("n01443537\n")
    (tiny / "val" / "val_annotations.txt").write_text("")
    with pytest.raises(UserError, match=r"the 'val' split of dataset tiny-imagenet .* has no images"):
        build_dataset(DataConfig(dataset="tiny-imagenet", root=str(tiny)), "val", None)


def test_caltech_download_offline_names_dataset_and_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets.utils as tvu

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(tvu, "download_and_extract_archive", no_network)  # torchvision's own download step
    import torchvision.datasets.caltech as tvc

    monkeypatch.setattr(tvc, "download_and_extract_archive", no_network)
    cfg = DataConfig(dataset="caltech101", root=str(tmp_path), download=True)
    with pytest.raises(
        UserError, match=r"Caltech-101 could not be downloaded .*put the extracted 101_ObjectCategories/"
    ):
        build_dataset(cfg, "train", None)


# ------------------------------------------------------------------------------------ MNIST as downloaded
def _mnist_files(folder: Path, *, gz: bool, kaggle: bool = False) -> dict[str, np.ndarray]:
    import gzip

    rng = np.random.default_rng(1)
    arrays = {}
    for prefix, n in (("train", 5), ("t10k", 3)):
        arrays[f"{prefix}-images"] = rng.integers(0, 256, (n, 28, 28))
        arrays[f"{prefix}-labels"] = (np.arange(n) + 1) % 10
    for stem, arr in arrays.items():
        kind = "idx3" if "images" in stem else "idx1"
        name = f"{stem}{'.' if kaggle else '-'}{kind}-ubyte"
        _idx(folder / name, arr)
        if gz:
            raw = (folder / name).read_bytes()
            (folder / name).unlink()
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
    return arrays


@pytest.mark.parametrize(
    "where, gz, kaggle",
    [(".", True, False), ("MNIST/raw", True, False), ("raw", False, False), (".", False, True)],
)
def test_mnist_in_its_official_layouts(tmp_path: Path, where: str, gz: bool, kaggle: bool) -> None:
    """The .gz files as downloaded (flat, or under MNIST/raw/ as torchvision puts them), unzipped files
    under raw/, Kaggle's dotted names: all read, by build_dataset and by prepare."""
    src = tmp_path / "mnist"
    arrays = _mnist_files(src / where, gz=gz, kaggle=kaggle)
    ds = build_dataset(DataConfig(dataset="mnist", root=str(src)), "val", None)
    assert len(ds) == 3 and ds.targets == [1, 2, 3]
    assert torch.equal(ds[2][0][0], torch.from_numpy(arrays["t10k-images"][2].astype(np.uint8)))
    dst = tmp_path / "out"
    assert prepare("mnist", src, dst, progress=False) == {"train": 5, "val": 3}
    assert sorted(p.name for p in (dst / "val").iterdir()) == ["1", "2", "3"]


def test_mnist_errors_name_the_file_and_no_missing_flag(tmp_path: Path) -> None:
    src = tmp_path / "mnist"
    _mnist_files(src, gz=True)
    (src / "t10k-labels-idx1-ubyte.gz").unlink()
    dst = tmp_path / "out"
    with pytest.raises(UserError) as e:
        prepare("mnist", src, dst, progress=False)
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte[.gz] is not in" in msg and "MNIST/raw" in msg
    assert "data.download" not in msg  # prepare has no download flag: do not suggest one
    assert not dst.exists()  # checked before writing: nothing written, not even the train split
    with pytest.raises(UserError, match=r"data.download=true downloads it"):  # training has the key
        build_dataset(DataConfig(dataset="mnist", root=str(src)), "val", None)
    _idx(src / "t10k-labels-idx1-ubyte", np.arange(3))
    raw = (src / "t10k-labels-idx1-ubyte").read_bytes()
    (src / "t10k-labels-idx1-ubyte").write_bytes(raw[:-1])
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte is damaged: its header promises 3 bytes"):
        prepare("mnist", src, dst, progress=False)
    (src / "t10k-labels-idx1-ubyte").write_bytes(b"<html>" + raw)
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte is not an idx file"):
        prepare("mnist", src, dst, progress=False)
    (src / "t10k-labels-idx1-ubyte").unlink()
    import gzip

    packed = gzip.compress(raw + b"\x01")
    (src / "t10k-labels-idx1-ubyte.gz").write_bytes(packed[:12] + b"\xff" * 8 + packed[20:])
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte.gz cannot be read \(.*a damaged download"):
        prepare("mnist", src, dst, progress=False)
    assert not dst.exists()


# ---------------------------------------------------------------------------------------- CIFAR checksums
def _fake_cifar(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """cifar-10-batches-py/ with 5 tiny train batches, a test batch and the meta file, and torchvision's
    MD5 table pointed at them (the real checksums need the real 160 MB files)."""
    import hashlib
    import pickle

    import torchvision.datasets as tvd

    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    md5 = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (2, 3072)).astype(np.uint8), "labels": [1, 2]}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    for f in base.iterdir():
        md5[f.name] = hashlib.md5(f.read_bytes()).hexdigest()
    monkeypatch.setattr(
        tvd.CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)]
    )
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": md5["batches.meta"]})
    return base


def test_cifar_names_the_file_failing_its_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    base = _fake_cifar(tmp_path / "src", monkeypatch)
    # the alias is accepted by the command line; SRC may also be the cifar-10-batches-py folder itself
    assert cli(["prepare", "cifar-10", str(base), str(tmp_path / "ok"), "--no-progress"]) == 0
    assert sorted((tmp_path / "ok" / "val").iterdir())[0].name == "c1"
    assert (tmp_path / "ok" / "classes.txt").read_text().splitlines()[:2] == ["c0", "c1"]
    ds = build_dataset(DataConfig(dataset="cifar10", root=str(tmp_path / "src")), "train", None)
    assert len(ds) == 10 and ds[0][0].shape == (3, 32, 32)
    with open(base / "data_batch_3", "ab") as f:
        f.write(b"\0")  # one byte more: a damaged extraction
    dst = tmp_path / "out"
    capsys.readouterr()
    assert cli(["prepare", "cifar10", str(tmp_path / "src"), str(dst), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data_batch_3 fails its MD5 checksum" in err and "not in" not in err
    assert "download" not in err and not dst.exists()
    with pytest.raises(UserError, match=r"data_batch_3 fails its MD5 checksum .*data.download=true"):
        build_dataset(DataConfig(dataset="cifar10", root=str(tmp_path / "src")), "train", None)
    (base / "test_batch").unlink()
    (base / "data_batch_3").unlink()
    with pytest.raises(UserError, match=r"cifar-10-batches-py/data_batch_3 is missing"):
        prepare("cifar10", tmp_path / "src", dst, progress=False)


# ------------------------------------------------------------------------- layout signatures and clean-up
def _tiny(src: Path) -> None:
    wnids = ["n02124075", "n01443537"]
    src.joinpath("val", "images").mkdir(parents=True)
    src.joinpath("wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        _jpeg(src / "train" / w / "images" / f"{w}_0.JPEG")
        (src / "train" / w / f"{w}_boxes.txt").write_text("boxes\n")
    _jpeg(src / "val" / "images" / "val_0.JPEG")
    (src / "val" / "val_annotations.txt").write_text(f"val_0.JPEG\t{wnids[0]}\t0\t0\t5\t5\n")


def test_imagenet_refuses_a_tiny_imagenet_folder_and_writes_nothing(tmp_path: Path) -> None:
    src, dst = tmp_path / "tiny-imagenet-200", tmp_path / "out"
    _tiny(src)
    with pytest.raises(
        UserError, match=r"is not an ImageNet-1k layout: .*looks like Tiny-ImageNet.*tiny-imagenet"
    ):
        prepare("imagenet", src, dst, progress=False)
    assert not dst.exists()
    (src / "wnids.txt").unlink()  # without its signature file: the wnid folders hold folders, not images
    with pytest.raises(
        UserError, match=r"class folder .*n01443537 holds folders \(images\), not only images"
    ):
        prepare("imagenet", src, dst, progress=False)
    for d in (src / "train").iterdir():
        for f in (d / "images").iterdir():
            f.rename(d / f.name)
        (d / "images").rmdir()
    with pytest.raises(UserError, match=r"val/images is not an ImageNet-1k class folder \(wnid\)"):
        prepare("imagenet", src, dst, progress=False)
    assert not dst.exists()
    with pytest.raises(UserError, match=r"val/images is not an ImageNet-1k class folder"):
        build_dataset(DataConfig(dataset="imagenet", root=str(src)), "val", None)


def test_a_failed_prepare_removes_what_it_wrote_and_only_that(tmp_path: Path, monkeypatch, capsys) -> None:
    from convnext.data import prepare as prep

    src = tmp_path / "caltech"
    for c in ("accordion", "airplanes"):
        for i in range(4):
            _jpeg(src / "101_ObjectCategories" / c / f"image_{i:04d}.jpg", i)
    (src / "101_ObjectCategories" / "accordion" / "Thumbs.db").write_bytes(b"\0\1junk")
    dst = tmp_path / "out"
    (dst / "train" / "accordion").mkdir(parents=True)
    (dst / "mine.txt").write_text("the user's")
    (dst / "train" / "accordion" / ".DS_Store").write_bytes(b"x")  # not an image a split would count
    before = sorted(str(p.relative_to(dst)) for p in dst.rglob("*"))
    place, calls = prep._Writer.place, []

    def disk_full(self, *args) -> None:
        calls.append(args)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        place(self, *args)

    monkeypatch.setattr(prep._Writer, "place", disk_full)
    with pytest.raises(OSError, match="No space left"):
        prepare("caltech101", src, dst, progress=False)
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*")) == before
    calls.clear()
    with pytest.raises(OSError):
        prepare("caltech101", src, tmp_path / "new" / "out", progress=False)
    assert not (tmp_path / "new").exists()  # folders this run created are gone too
    monkeypatch.setattr(prep._Writer, "place", place)
    # the --link flag (and the deprecated --mode), the non-image left out and said
    capsys.readouterr()
    assert cli(["prepare", "caltech101", str(src), str(dst), "--link", "symlink"]) == 0
    err = capsys.readouterr().err
    assert "left out 1 file(s) that are not images: " in err and "Thumbs.db" in err
    files = [p for p in (dst / "train").rglob("*.jpg") if p.name != "old.jpg"]
    assert len(files) == 6 and all(p.is_symlink() for p in files)
    assert cli(["prepare", "caltech101", str(src), str(tmp_path / "copy"), "--mode", "copy"]) == 0
    assert "--mode is deprecated; use --link copy" in capsys.readouterr().err
    assert not any(p.is_symlink() for p in (tmp_path / "copy").rglob("*"))


# ------------------------------------------------------------------------------- ImageNet as downloaded
def _imagenet_downloads(src: Path, sample: Path) -> tuple[list[str], dict[str, bytes]]:
    """The three archives as image-net.org serves them, with real photos: 3 classes of 2 train images
    (one class also holding a file that is not an image) and 4 val images."""
    wnids = sorted(d.name for d in sample.iterdir())[:3]
    photos = {w: next((sample / w).iterdir()).read_bytes() for w in wnids}
    write_imagenet_downloads(src, photos)
    return wnids, photos


def test_imagenet_from_the_archives_as_downloaded(tmp_path: Path, imagenet_sample: Path, capsys) -> None:
    src, dst = tmp_path / "downloads", tmp_path / "imagenet"
    wnids, photos = _imagenet_downloads(src, imagenet_sample)
    capsys.readouterr()
    assert cli(["prepare", "imagenet", str(src), str(dst), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "left out 1 file(s) that are not images" in err and f"{wnids[1]}/{wnids[1]}_99.JPEG" in err
    assert "imagenet train: reading " in err and "ILSVRC2012_img_train.tar as it is (3 classes" in err
    assert _prepared(dst, "train") == {w: [f"{w}_10.JPEG", f"{w}_11.JPEG"] for w in wnids}
    assert _prepared(dst, "val") == {
        wnids[0]: ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000004.JPEG"],
        wnids[1]: ["ILSVRC2012_val_00000002.JPEG"],
        wnids[2]: ["ILSVRC2012_val_00000003.JPEG"],
    }
    assert (dst / "val" / wnids[2] / "ILSVRC2012_val_00000003.JPEG").read_bytes() == photos[wnids[2]]
    assert sorted(p.name for p in src.iterdir()) == [  # nothing extracted next to the archives
        "ILSVRC2012_devkit_t12.tar.gz",
        "ILSVRC2012_img_train.tar",
        "ILSVRC2012_img_val.tar",
    ]
    index = {w: i for i, w in enumerate(imagenet1k_wnids())}
    ds = build_dataset(DataConfig(root=str(dst)), "val", None)
    assert len(ds.classes) == 1000
    assert sorted(t for _, t in ds.samples) == sorted(index[w] for w in (wnids[0], wnids[0], *wnids[1:]))
    assert len(build_dataset(DataConfig(root=str(dst)), "train", None)) == 6

    # a second run adds only what is missing: kept files are not rewritten
    kept = dst / "train" / wnids[0] / f"{wnids[0]}_10.JPEG"
    inode = kept.stat().st_ino
    (dst / "val" / wnids[1] / "ILSVRC2012_val_00000002.JPEG").unlink()
    assert prepare("imagenet", src, dst, progress=False) == {"train": 6, "val": 4}
    assert kept.stat().st_ino == inode
    assert (dst / "val" / wnids[1] / "ILSVRC2012_val_00000002.JPEG").read_bytes() == photos[wnids[1]]


def test_imagenet_archive_failures_leave_nothing(
    tmp_path: Path, imagenet_sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from convnext.data import prepare as prep

    src, dst = tmp_path / "downloads", tmp_path / "out"
    wnids, _ = _imagenet_downloads(src, imagenet_sample)
    val = src / "ILSVRC2012_img_val.tar"
    whole = val.read_bytes()
    val.write_bytes(whole[: len(whole) // 2])  # a download cut short: refused before anything is written
    with pytest.raises(UserError, match=r"ILSVRC2012_img_val.tar cannot be read .*incomplete download"):
        prepare("imagenet", src, dst, progress=False)
    assert not dst.exists()
    val.write_bytes(whole)

    (src / "ILSVRC2012_devkit_t12.tar.gz").rename(tmp_path / "devkit.tar.gz")
    with pytest.raises(UserError, match=r"ILSVRC2012_img_val.tar needs its labels: put ILSVRC2012_devkit"):
        prepare("imagenet", src, dst, progress=False)
    (tmp_path / "devkit.tar.gz").rename(src / "ILSVRC2012_devkit_t12.tar.gz")

    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    with monkeypatch.context() as m:  # a file system too small for the images: refused before writing
        m.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
        with pytest.raises(UserError, match=r"needs about 0.0 GB .* 0.0 GB free"):
            prepare("imagenet", src, dst, progress=False)
    assert not dst.exists()

    # the disk fills while the train archive streams: what this run wrote is removed, nothing else
    (dst / "train").mkdir(parents=True)
    (dst / "notes.txt").write_text("the user's")
    write, calls = prep._Writer.write_stream, []

    def disk_full(self, *args):
        calls.append(args)
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        return write(self, *args)

    monkeypatch.setattr(prep._Writer, "write_stream", disk_full)
    with pytest.raises(OSError, match="No space left"):
        prepare("imagenet", src, dst, progress=False)
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*")) == ["notes.txt", "train"]
    monkeypatch.setattr(prep._Writer, "write_stream", write)

    # a class archive inside is cut short (the outer archive is whole): found while streaming, and what
    # the run wrote before it is removed
    import tarfile

    train = src / "ILSVRC2012_img_train.tar"
    with tarfile.open(train) as tf:
        inner = {m.name: tf.extractfile(m).read() for m in tf}
    last = sorted(inner)[-1]
    inner[last] = inner[last][:1500]
    write_tar(train, inner)
    with pytest.raises(UserError, match=rf"ILSVRC2012_img_train.tar:{last} cannot be read .*incomplete"):
        prepare("imagenet", src, dst, progress=False)
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*")) == ["notes.txt", "train"]

    # the train archive holds something other than class archives: refused up front
    write_tar(src / "ILSVRC2012_img_train.tar", {"n01440764_1.JPEG": b"x", "n01440764.tar": b""})
    with pytest.raises(UserError, match=r"holds n01440764_1.JPEG, not a <wnid>.tar of an ImageNet-1k class"):
        prepare("imagenet", src, dst, progress=False)
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*")) == ["notes.txt", "train"]
    # build_dataset does not read archives: it says how to get a folder
    with pytest.raises(
        UserError, match=r"holds ILSVRC2012_img_val.tar, not an extracted val/ .*convnext prepare"
    ):
        build_dataset(DataConfig(dataset="imagenet", root=str(src)), "val", None)


def test_imagenet_folders_named_as_the_archives(tmp_path: Path, imagenet_sample: Path) -> None:
    """The seed project's layout: ILSVRC2012_img_train/ (class archives unpacked or not yet) and
    ILSVRC2012_img_val/ (flat) beside the devkit archive."""
    import tarfile

    dl = tmp_path / "downloads"
    wnids, photos = _imagenet_downloads(dl, imagenet_sample)
    src = tmp_path / "ILSVRC2012"
    with tarfile.open(dl / "ILSVRC2012_img_train.tar") as tf:
        tf.extractall(src / "ILSVRC2012_img_train", filter="data")  # the outer archive only
    with tarfile.open(src / "ILSVRC2012_img_train" / f"{wnids[0]}.tar") as tf:  # one class unpacked
        tf.extractall(src / "ILSVRC2012_img_train" / wnids[0], filter="data")
    (src / "ILSVRC2012_img_train" / f"{wnids[0]}.tar").unlink()
    with tarfile.open(dl / "ILSVRC2012_img_val.tar") as tf:
        tf.extractall(src / "ILSVRC2012_img_val", filter="data")
    (dl / "ILSVRC2012_devkit_t12.tar.gz").rename(src / "ILSVRC2012_devkit_t12.tar.gz")

    ds = build_dataset(DataConfig(dataset="imagenet", root=str(src)), "val", None)
    index = {w: i for i, w in enumerate(imagenet1k_wnids())}
    assert [t for _, t in ds.samples] == [index[w] for w in (wnids[0], wnids[1], wnids[2], wnids[0])]
    with pytest.raises(UserError, match=r"holds the per-class archives .*convnext prepare imagenet"):
        build_dataset(DataConfig(dataset="imagenet", root=str(src)), "train", None)

    dst = tmp_path / "out"
    assert prepare("imagenet", src, dst, progress=False) == {"train": 6, "val": 4}
    assert _prepared(dst, "train") == {w: [f"{w}_10.JPEG", f"{w}_11.JPEG"] for w in wnids}
    assert (dst / "val" / wnids[0] / "ILSVRC2012_val_00000004.JPEG").stat().st_ino == (
        src / "ILSVRC2012_img_val" / "ILSVRC2012_val_00000004.JPEG"
    ).stat().st_ino  # extracted files are hard-linked, as before


# -------------------------------------------------------------- mini-ImageNet's other layouts, plain folders
def _mini_csvs(csv_dir: Path, images: Path, nested: bool, val_name: str = "valid.csv") -> None:
    rows = {"train.csv": ["n01532829", "n01558993"], val_name: ["n01855672"], "test.csv": ["n01930112"]}
    k = 0
    for csv_name, classes in rows.items():
        lines = ["filename,label"]
        for c in classes:
            for i in range(5):
                name = f"{c}{i:08d}.jpg"
                _jpeg(images / c / name if nested else images / name, k)
                k += 1
                lines.append(f"{name},{c}")
        csv_dir.mkdir(parents=True, exist_ok=True)
        (csv_dir / csv_name).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("nested", [False, True])
def test_mini_imagenet_valid_csv_under_mini_imagenet(
    tmp_path: Path, nested: bool, capsys, caplog: pytest.LogCaptureFixture
) -> None:
    """train.csv/valid.csv/test.csv with mini_imagenet/images (flat, or one folder per wnid as mmfewshot
    has it); the pooling note is said once, by prepare and by training's three builds of the splits."""
    src = tmp_path / "mini"
    _mini_csvs(src, src / "mini_imagenet" / "images", nested)
    capsys.readouterr()
    assert cli(["prepare", "mini-imagenet", str(src), str(tmp_path / "out"), "--no-progress"]) == 0
    assert capsys.readouterr().err.count("disjoint classes") == 1
    assert sum(len(v) for v in _prepared(tmp_path / "out", "val").values()) == 4
    cfg = DataConfig(dataset="mini-imagenet", root=str(src))
    caplog.clear()  # prepare's note above
    with caplog.at_level(logging.INFO, logger="convnext"):
        sizes = [len(build_dataset(cfg, s, None)) for s in ("val", "train", "val")]  # as `convnext train`
    assert sizes == [4, 16, 4]
    assert sum("disjoint classes" in r.getMessage() for r in caplog.records) == 1


def test_mini_imagenet_classification_csvs_and_class_folders(tmp_path: Path) -> None:
    src = tmp_path / "mini"
    for c in ("n01532829", "n01558993"):
        for i in range(3):
            _jpeg(src / "images" / f"{c}_{i}.jpg", i)
    (src / "train.csv").write_text("filename,label\nn01532829_0.jpg,n01532829\nn01558993_0.jpg,n01558993\n")
    (src / "valid.csv").write_text("filename,label\nn01532829_1.jpg,n01532829\nn01558993_1.jpg,n01558993\n")
    assert prepare("mini-imagenet", src, tmp_path / "out", progress=False) == {"train": 2, "val": 2}
    # no csv at all (Kaggle's mini-ImageNet): one folder per class, split per class with the seed
    kag = tmp_path / "kaggle"
    for c in ("n01532829", "n01558993"):
        for i in range(5):
            _jpeg(kag / c / f"{c}_{i}.jpg", i)
    assert prepare("mini-imagenet", kag, tmp_path / "k", progress=False) == {"train": 8, "val": 2}


def test_plain_class_folders_get_a_seeded_split(tmp_path: Path, capsys) -> None:
    src = tmp_path / "photos"
    for c, n in (("cats", 10), ("dogs", 5)):
        for i in range(n):
            _jpeg(src / c / f"{i}.jpg", i)
    dst = tmp_path / "out"
    args = ["prepare", "folders", str(src), str(dst), "--val-fraction", "0.4", "--seed", "3", "--no-progress"]
    assert cli(args) == 0
    assert {c: len(f) for c, f in _prepared(dst, "val").items()} == {"cats": 4, "dogs": 2}
    tr, va = _prepared(dst, "train"), _prepared(dst, "val")
    assert all(
        not set(tr[c]) & set(va[c]) and len(tr[c]) + len(va[c]) == n for c, n in (("cats", 10), ("dogs", 5))
    )
    cfg = DataConfig(dataset="folders", root=str(src), val_fraction=0.4, split_seed=3)
    va = build_dataset(cfg, "val", None)
    assert sorted(Path(p).name for p, _ in va.samples) == sorted(
        f for fs in _prepared(dst, "val").values() for f in fs
    )  # training on the folders directly gives the same split
    assert cli(args) == 0  # a second run with the same seed: nothing foreign, nothing added
    assert cli([*args[:-2], "4", "--no-progress"]) == 2  # another seed would mix the splits
    assert "another --seed/--val-fraction" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"is already split .*train.*data.root"):
        prepare("folders", dst, tmp_path / "again", progress=False)


# ----------------------------------------------------------------------------------- one dataset catalog
def _variants(spelling: str) -> list[str]:
    return [spelling, spelling.upper(), spelling.replace("-", "_")]


def test_every_catalog_spelling_means_one_dataset_to_build_prepare_help_and_config(
    tmp_path: Path, capsys
) -> None:
    """build_dataset, prepare, `convnext prepare --help` and the config check all read data/catalog.py:
    every spelling of every entry resolves to that entry everywhere, and prepare takes exactly the
    entries the catalog calls preparable (the lists were once kept three times and drifted)."""
    from convnext.data import catalog
    from convnext.data.datasets import DATASETS
    from convnext.engine.config import load_config

    assert list(DATASETS) == catalog.names()
    with pytest.raises(SystemExit):
        cli(["prepare", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    missing = tmp_path / "no-such-source"
    for spec in catalog.CATALOG:
        assert (spec.layout is None) != (spec.builder is None), spec.name  # read one way, not two
        assert spec.arrays is None or spec.builder is not None, spec.name
        assert spec.layout is not None or not (spec.archives or spec.splits or spec.seeded_split), spec.name
        for ref in (spec.builder, spec.arrays, spec.download):  # the lazily imported functions exist
            if ref is not None and "." in ref.__qualname__:
                module, name = ref.__qualname__.split(".")
                assert callable(getattr(__import__(f"convnext.data.{module}", fromlist=[name]), name)), ref
        for spelling in (s for a in spec.spellings for s in _variants(a)):
            assert catalog.find_dataset(spelling) is spec, spelling
            if spec.preparable:
                with pytest.raises(UserError, match="source folder .* does not exist"):  # the name passed
                    prepare(spelling, missing, tmp_path / "out", progress=False)
            else:
                with pytest.raises(UserError, match=f"cannot be prepared.*{spec.name} needs no preparation"):
                    prepare(spelling, missing, tmp_path / "out", progress=False)
        if spec.preparable:
            assert all(a in help_text for a in spec.spellings), (spec.name, help_text)
            assert spec.description in help_text
        spelling = spec.aliases[-1] if spec.aliases else spec.name
        model = {"segmentation": "upernet_convnext_atto", "detection": "fasterrcnn_convnext_atto"}.get(
            spec.task, "convnext_atto"
        )  # a model of the dataset's task (a classifier on a detection dataset is refused by name)
        try:
            load_config(None, [f"model.name={model}", f"data.dataset={spelling}"], check_paths=False)
        except UserError as e:  # another key may object (e.g. data.root), never the dataset's name
            assert "data.dataset" not in str(e), e
    with pytest.raises(
        UserError, match=r"data.dataset: 'imagenett' is not one of .*; did you mean imagenet\?"
    ):
        build_dataset(DataConfig(dataset="imagenett"), "train")
    with pytest.raises(
        UserError, match=r"'cifar_1O' cannot be prepared; choose one of .*did you mean cifar10\?"
    ):
        prepare("cifar_1O", missing, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_catalog_is_the_only_table_of_dataset_names() -> None:
    """No module but data/catalog.py lists dataset names (an alias table, a dict keyed by them, a tuple of
    several like the PREPARABLE there was) or picks a reader by comparing against one in data/ (the if-chain
    that chose a layout a third time); two entries claiming one spelling are refused when it is built."""
    import ast

    import convnext
    from convnext.data import catalog

    spelled = {catalog._key(s) for spec in catalog.CATALOG for s in spec.spellings}

    def is_name(node: ast.AST | None) -> bool:
        return (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and catalog._key(node.value) in spelled
        )

    package = Path(convnext.__file__).parent
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel == "data/catalog.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Dict):  # an alias table (spelling -> name) or a registry keyed by names
                keys, values = sum(map(is_name, node.keys)), sum(map(is_name, node.values))
                if keys >= 3 or values >= 2 or (keys >= 2 and values):
                    found.append(f"{rel}:{node.lineno} maps dataset names")
            if isinstance(node, ast.Tuple | ast.List | ast.Set) and sum(map(is_name, node.elts)) >= 3:
                found.append(f"{rel}:{node.lineno} lists dataset names")
            if (
                rel.startswith("data/")
                and isinstance(node, ast.Compare)
                and any(is_name(c) for c in [node.left, *node.comparators])
            ):
                found.append(f"{rel}:{node.lineno} compares with a dataset name")
    assert not found, found

    twice = (*catalog.CATALOG, catalog.DatasetSpec("tiny", "a copy", ("tiny_imagenet",)))
    with pytest.raises(ValueError, match="'tiny_imagenet' of tiny is already tiny-imagenet's"):
        catalog._index(twice)
