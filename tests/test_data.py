"""Data pipeline: class lists, datasets from every raw layout, transforms, loaders, bad data."""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SYNSETS

import convnext.data.classes
from convnext.data import (
    DataConfig,
    build_dataset,
    build_eval_transform,
    build_loader,
    build_mixup_cutmix,
    build_train_transform,
    eval_resize_size,
    imagenet1k_classes,
    resolve_class_list,
)
from convnext.data.loader import EvalShardSampler
from convnext.errors import UserError


# ---------------------------------------------------------------------------------------------- classes
@contextlib.contextmanager
def _warns(caplog: pytest.LogCaptureFixture, match: str) -> Iterator[None]:
    """A warning of the package (convnext.messages, logging) matching ``match`` is said inside the block."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="convnext"):
        yield
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(re.search(match, m) for m in said), (match, said)


def test_shipped_synsets_equal_shared_list(synset_file: Path) -> None:
    shipped = Path(convnext.data.classes.__file__).with_name("imagenet_synsets.txt")
    assert shipped.read_text() == synset_file.read_text()
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


# ------------------------------------------------------------------------------------------ helpers
def _save(path: Path, mode: str = "RGB", fmt: str = "JPEG", size: tuple[int, int] = (20, 16)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path, fmt)
    return path


def _folder(root: Path, classes=("cat", "dog"), per_class: int = 3, split: str = "train") -> Path:
    for c in classes:
        for i in range(per_class):
            _save(root / split / c / f"{c}_{i}.jpg")
    return root


# --------------------------------------------------------------------------------------- datasets
def test_digits_split_is_seeded_stratified_and_disjoint() -> None:
    cfg = DataConfig(dataset="digits")
    tr, va = build_dataset(cfg, "train", None), build_dataset(cfg, "val", None)
    assert (len(tr), len(va)) == (1437, 360) and tr.classes == [str(i) for i in range(10)]
    img, y = va[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.uint8 and 0 <= y < 10
    assert sorted(set(va.targets)) == list(range(10))
    again = build_dataset(cfg, "val", None)
    assert torch.equal(again.images, va.images)
    flat = {bytes(x.numpy()) for x in tr.images}
    assert not any(bytes(x.numpy()) in flat for x in va.images[:50])
    with pytest.raises(UserError, match="split 'nope' does not exist"):
        build_dataset(cfg, "nope", None)


def test_image_folder_odd_images_and_bad_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _folder(tmp_path, per_class=2)
    cat = root / "train" / "cat"
    _save(cat / "cmyk.jpg", mode="CMYK")
    _save(cat / "palette.png", mode="P", fmt="PNG")
    _save(cat / "grey.jpg", mode="L")
    _save(cat / "png_named.jpg", fmt="PNG")
    _save(cat / "old.bmp", fmt="BMP")
    (cat / "empty.jpg").write_bytes(b"")
    (cat / "notes.txt").write_text("not an image")
    good = _save(cat / "trunc.jpg").read_bytes()
    (cat / "trunc.jpg").write_bytes(good[: len(good) // 2])
    cfg = DataConfig(root=str(root))
    with _warns(caplog, r"skipped 2 unusable file\(s\).*empty.jpg \(empty file\).*notes.txt"):
        ds = build_dataset(cfg, "train", None)
    assert ds.classes == ["cat", "dog"] and len(ds.skipped) == 2
    names = [Path(p).name for p, _ in ds.samples]
    for i, name in enumerate(names):
        if name == "trunc.jpg":
            with _warns(caplog, "trunc.jpg.*truncated or corrupt"):
                img, y = ds[i]
            assert torch.equal(img, ds[i + 1][0]) and ds.load_failures == 1  # the next sample instead
        else:
            img, y = ds[i]
        assert img.shape[0] == 3 and img.dtype == torch.uint8
    strict = DataConfig(root=str(root), strict=True)
    with pytest.raises(UserError, match=r"image .*(empty|notes).* is unusable .*data.strict=false"):
        build_dataset(strict, "train", None)
    (cat / "empty.jpg").unlink()
    (cat / "notes.txt").unlink()
    ds = build_dataset(strict, "train", None)
    with pytest.raises(UserError, match=r"trunc.jpg is unusable"):
        [ds[i] for i in range(len(ds))]


def test_symlink_loops_and_links_count_each_file_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """os.walk(followlinks=True) recursed through ``loop -> ..`` (2 images counted 41 times); each real
    folder is walked once and each real file counted once, under its own class."""
    import os

    root = _folder(tmp_path / "data", per_class=2)
    cat, dog = root / "train" / "cat", root / "train" / "dog"
    _save(dog / "sub" / "deep.jpg")
    outside = _save(tmp_path / "elsewhere" / "ext.jpg")
    os.symlink("..", cat / "loop")  # cat/loop/cat/loop/... and cat/loop/dog
    os.symlink("../dog", cat / "into_dog")  # dog's images must stay dog's
    os.symlink("cat_0.jpg", cat / "same.jpg")  # the same file twice
    os.symlink(outside, cat / "ext.jpg")  # a link to a file elsewhere: one more image
    os.symlink(dog / "sub", dog / "sub_again")  # a second link to a folder already walked
    os.symlink(cat / "nothing.jpg", cat / "broken.jpg")  # a dangling link is reported, not hidden
    with _warns(caplog, r"skipped 1 unusable file\(s\): .*broken.jpg \(unreadable"):
        ds = build_dataset(DataConfig(root=str(root)), "train", None)
    got = sorted((str(Path(p).relative_to(root / "train")), ds.classes[t]) for p, t in ds.samples)
    assert got == [
        ("cat/cat_0.jpg", "cat"),
        ("cat/cat_1.jpg", "cat"),
        ("cat/ext.jpg", "cat"),
        ("dog/dog_0.jpg", "dog"),
        ("dog/dog_1.jpg", "dog"),
        ("dog/sub/deep.jpg", "dog"),
    ]


def _count_lines(text: str, needle: str) -> int:
    return sum(needle in ln for ln in text.splitlines())


def test_training_substitution_is_said_once_across_workers(tmp_path: Path, capfd) -> None:
    """Each loader worker warned on its own (and again with each new set of workers every epoch); the
    shared record says it once per file, and no file is decoded twice."""
    import os

    class ToStderr(logging.Handler):  # from the worker processes too: caplog records in-process only
        def emit(self, record: logging.LogRecord) -> None:
            os.write(2, f"{record.levelname}: {record.getMessage()}\n".encode())

    to_stderr = ToStderr()
    logging.getLogger("convnext").addHandler(to_stderr)
    try:
        _substitute_three_epochs(tmp_path, capfd)
    finally:
        logging.getLogger("convnext").removeHandler(to_stderr)


def _substitute_three_epochs(tmp_path: Path, capfd) -> None:
    root = _folder(tmp_path, per_class=4)
    good = _save(root / "train" / "cat" / "trunc.jpg").read_bytes()
    (root / "train" / "cat" / "trunc.jpg").write_bytes(good[: len(good) // 2])
    cfg = DataConfig(root=str(root), img_size=16, workers=2, persistent_workers=False)
    ds = build_dataset(cfg, "train", build_eval_transform(cfg))
    assert ds.on_error == "substitute"
    loader = build_loader(ds, 3, train=True, cfg=cfg, seed=0, distributed=False)
    for _ in range(3):  # three epochs, fresh worker processes each
        n = sum(len(y) for _, y in loader)
        assert n == 9  # 9 samples, drop_last: the bad one replaced, the epoch's length kept
    err = capfd.readouterr().err
    assert _count_lines(err, "trunc.jpg (truncated or corrupt); training uses another image") == 1, err
    assert ds.load_failures == 1 and [Path(p).name for p in ds.failed_files()] == ["trunc.jpg"]


def test_evaluation_drops_unreadable_files_with_workers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ "drop" mode (every split but the training one): no substitute, the file in no metric, named."""
    from torch import nn

    from convnext.data.datasets import Relabeled
    from convnext.evaluation.loop import evaluate

    root = _folder(tmp_path, per_class=3, split="val")
    good = _save(root / "val" / "dog" / "trunc.jpg").read_bytes()
    (root / "val" / "dog" / "trunc.jpg").write_bytes(good[: len(good) // 2])
    cfg = DataConfig(root=str(root), img_size=16, workers=2, max_pixels=20 * 16)
    _save(root / "val" / "cat" / "big.jpg", size=(21, 16))  # over the limit: refused from its header
    ds = build_dataset(cfg, "val", build_eval_transform(cfg))
    assert ds.on_error == "drop" and len(ds) == 8
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    for k, data in enumerate((ds, Relabeled(ds, {0: 1, 1: 0}, ["dog", "cat"]))):
        loader = build_loader(data, 3, train=False, cfg=cfg, seed=0, distributed=False)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="convnext"):
            res = evaluate(model, loader, "cpu", progress=False, return_predictions=True)
        # named once per file per process (the training loop evaluates every epoch)
        said = [r.getMessage()[:36] for r in caplog.records if r.name == "convnext.evaluation.loop"]
        assert said == ["evaluation: left out 2 unreadable fi"] * (k == 0)
        assert res["n"] == 6 and res["dropped"] == 2 and len(res["targets"]) == 6
        named = {Path(p).name: why for p, why in res["dropped_files"]}
        assert named["trunc.jpg"] == "truncated or corrupt"
        assert named["big.jpg"].startswith("21x16 = 0.0 Mpx, above the limit of 320 pixels")
    assert sorted(res["targets"].tolist()) == [0, 0, 0, 1, 1, 1]
    strict = build_dataset(DataConfig(root=str(root), strict=True, max_pixels=0), "val", None)
    with pytest.raises(UserError, match=r"trunc.jpg is unusable \(truncated or corrupt\)"):
        [strict[i] for i in range(len(strict))]


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="split folder .*train does not exist"):
        build_dataset(DataConfig(root=str(tmp_path)), "train", None)
    (tmp_path / "train").mkdir()
    with pytest.raises(UserError, match="has no class folders"):
        build_dataset(DataConfig(root=str(tmp_path)), "train", None)
    _folder(tmp_path, classes=("a",), per_class=1)
    (tmp_path / "train" / "b").mkdir()
    (tmp_path / "train" / "b" / "x.txt").write_text("hi")
    with pytest.raises(UserError, match=r"class folder .*b has no usable images"):
        build_dataset(DataConfig(root=str(tmp_path)), "train", None)
    with pytest.raises(UserError, match="not one of"):
        build_dataset(DataConfig(dataset="imagenet22k-nope"), "train", None)


def test_imagenet_sample_folder_uses_true_indices(imagenet_sample: Path) -> None:
    cfg = DataConfig(root=str(imagenet_sample.parent))
    ds = build_dataset(cfg, "val", build_eval_transform(DataConfig(img_size=64, crop_pct=0.875)))
    lines = [ln.split()[0] for ln in SYNSETS.read_text().splitlines()]
    assert len(ds) == 100 and len(ds.classes) == 1000 and ds.classes == lines
    for path, target in ds.samples:
        assert target == lines.index(Path(path).parent.name)
    assert dict((Path(p).parent.name, t) for p, t in ds.samples)["n01440764"] == 0
    x, _ = ds[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32


# ------------------------------------------------------------------------------------- transforms
def test_eval_transform_resize_and_center_crop() -> None:
    assert eval_resize_size(224, 0.875) == 256 and eval_resize_size(384, 1.0) == 384
    img = torch.zeros(3, 100, 200, dtype=torch.uint8)
    img[:, :, 90:110] = 255  # a bright vertical bar in the middle survives the center crop
    out = build_eval_transform(DataConfig(img_size=56, crop_pct=0.875))(img)
    assert out.shape == (3, 56, 56) and out.dtype == torch.float32
    # resized to 64 x 128, center crop 56 keeps columns 36..92 of 128: the bar (58..70) is in the middle
    assert out[:, :, 28].mean() > 1.5 and out[:, :, 2].mean() < -1.5
    t = build_eval_transform(DataConfig(img_size=32, crop_pct=1.0))
    assert t(torch.zeros(3, 32, 40, dtype=torch.uint8)).shape == (3, 32, 32)


def test_train_transform_shape_dtype_and_normalization() -> None:
    cfg = DataConfig(img_size=48)
    t = build_train_transform(cfg)
    imgs = torch.stack([t(torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8)) for _ in range(8)])
    assert imgs.shape == (8, 3, 48, 48) and imgs.dtype == torch.float32
    assert -3 < imgs.mean() < 3
    plain = build_train_transform(DataConfig(img_size=48, randaugment=None, reprob=0, hflip=0))
    names = [type(x).__name__ for x in plain.transforms]
    assert names == ["RandomResizedCrop", "ToDtype", "Normalize"]


def test_mixup_cutmix_soft_targets_and_smoothing_equivalence() -> None:
    cfg = DataConfig()
    mix = build_mixup_cutmix(cfg, 10)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8)
    for _ in range(6):
        xm, ym = mix(x, y)
        assert xm.shape == x.shape and ym.shape == (8, 10)
        torch.testing.assert_close(ym.sum(1), torch.ones(8))
    _, ym = build_mixup_cutmix(DataConfig(mixup_prob=1e-9), 10)(x, y)
    assert torch.equal(ym, torch.nn.functional.one_hot(y, 10).float())
    assert build_mixup_cutmix(DataConfig(mixup=0, cutmix=0), 10) is None
    # torch's label smoothing on mixed soft targets == timm's mixing of smoothed one-hot targets
    logits, eps, lam = torch.randn(8, 10), 0.1, 0.3
    y1, y2 = torch.nn.functional.one_hot(y, 10).float(), torch.nn.functional.one_hot(y.roll(1), 10).float()
    mixed = lam * y1 + (1 - lam) * y2
    ours = torch.nn.CrossEntropyLoss(label_smoothing=eps)(logits, mixed)
    smooth = lambda t: t * (1 - eps) + eps / 10  # noqa: E731
    timm_target = lam * smooth(y1) + (1 - lam) * smooth(y2)
    timm_loss = (-timm_target * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(ours, timm_loss)


# ----------------------------------------------------------------------------------------- loader
def test_seeded_loader_same_batches_twice_with_workers(tmp_path: Path) -> None:
    cfg = DataConfig(dataset="digits", img_size=24, workers=2, persistent_workers=False)
    ds = build_dataset(cfg, "val", build_train_transform(cfg))

    def batches(seed: int) -> list[torch.Tensor]:
        loader = build_loader(ds, 32, train=True, cfg=cfg, seed=seed, distributed=False)
        assert loader.drop_last and loader.num_workers == 2
        return [torch.cat([x.flatten(), y.float()]) for x, y in itertools.islice(loader, 3)]

    a, b, c = batches(0), batches(0), batches(1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_eval_shards_cover_every_sample_once() -> None:
    shards = [list(EvalShardSampler(10, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10)) and [len(s) for s in shards] == [4, 3, 3]
    loader = build_loader(
        list(range(10)), 4, train=False, cfg=DataConfig(workers=0), seed=0, distributed=False
    )
    assert [len(b) for b in loader] == [4, 4, 2] and not loader.pin_memory


def test_distributed_loaders_use_seeded_train_sampler_and_unpadded_eval_shards() -> None:
    import socket

    import torch.distributed as dist

    from convnext.data.loader import EpochSampler

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        cfg = DataConfig(workers=0)
        train = build_loader(list(range(10)), 4, train=True, cfg=cfg, seed=3, distributed=True)
        assert isinstance(train.sampler, EpochSampler) and train.sampler.seed == 3
        assert len(train) == 2  # drop_last
        val = build_loader(list(range(10)), 4, train=False, cfg=cfg, seed=3, distributed=True)
        assert isinstance(val.sampler, EvalShardSampler) and sum(len(b) for b in val) == 10
    finally:
        dist.destroy_process_group()


def test_batch_finish_on_device_equals_the_per_image_transform() -> None:
    """Workers stop at uint8; BatchFinish (float, normalize, per-sample erasing) gives the same values."""
    from convnext.data import BatchFinish

    cfg = DataConfig(img_size=32, randaugment=None, reprob=0.0)
    images = [torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8) for _ in range(4)]
    torch.manual_seed(0)
    full = torch.stack([build_train_transform(cfg)(x) for x in images])
    torch.manual_seed(0)
    head = torch.stack([build_train_transform(cfg, finish=False)(x) for x in images])
    assert head.dtype == torch.uint8
    assert torch.equal(BatchFinish(cfg)(head), full)
    # with erasing always on, every sample gets its own box of N(0, 1) noise
    erased = BatchFinish(DataConfig(img_size=32, reprob=1.0))(head.clone())
    changed = (erased != BatchFinish(cfg)(head)).flatten(1).float().mean(1)
    assert (changed > 0).all() and len(set(changed.tolist())) > 1
