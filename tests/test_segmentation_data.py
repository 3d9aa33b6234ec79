"""Segmentation data: the ADE20K layout (reduce_zero_label), a folder of images + PNG masks with a class
file, the digit scenes; one sentence for a missing or mismatched mask and an unreadable image; mmseg's
train pipeline keeps image and mask aligned through resize, crop, flip and padding (255 in the mask), its
crop honours cat_max_ratio, and mmcv's keep-ratio scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convnext.data import build_dataset
from convnext.data.config import DataConfig
from convnext.data.segmentation import (
    IGNORE_INDEX,
    SegTrainTransform,
    ade20k_names,
    reduce_zero_label,
    rescale_size,
)
from convnext.errors import UserError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _write(root: Path, images: str, masks: str, split: str, n: int, *, classes: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (root / images / split).mkdir(parents=True, exist_ok=True)
    (root / masks / split).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = int(rng.integers(24, 48)), int(rng.integers(24, 48))
        mask = rng.integers(0, classes, (h, w), dtype=np.uint8)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            root / images / split / f"{i}.jpg"
        )
        Image.fromarray(mask).save(root / masks / split / f"{i}.png")


def test_ade20k_layout_reduces_the_zero_label(tmp_path: Path) -> None:
    _write(tmp_path, "images", "annotations", "training", 3, classes=151)
    _write(tmp_path, "images", "annotations", "validation", 2, classes=151, seed=1)
    cfg = DataConfig(dataset="ade20k", root=str(tmp_path))
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) == 3 and len(val) == 2
    assert train.classes == ade20k_names() and len(train.classes) == 150 and train.classes[0] == "wall"
    raw = np.asarray(Image.open(tmp_path / "annotations" / "training" / "0.png")).astype(np.int64)
    _, mask = train[0]
    want = np.where(raw == 0, 255, raw - 1)  # mmseg: 0 -> 255, k -> k - 1
    assert np.array_equal(mask.numpy(), want)
    _, unreduced = build_dataset(
        DataConfig(dataset="ade20k", root=str(tmp_path), reduce_zero_label=False), "train"
    )[0]
    assert np.array_equal(unreduced.numpy(), raw)


def test_reduce_zero_label_keeps_255_ignored() -> None:
    assert reduce_zero_label(torch.tensor([0, 1, 2, 150, 255])).tolist() == [255, 0, 1, 149, 255]


def test_folder_of_images_and_masks(tmp_path: Path) -> None:
    _write(tmp_path, "images", "masks", "train", 2, classes=3)
    with pytest.raises(UserError, match="classes.txt"):
        build_dataset(DataConfig(dataset="segmentation-folder", root=str(tmp_path)), "train")
    (tmp_path / "classes.txt").write_text("sky\nroad\ncar\n")
    cfg = DataConfig(dataset="segmentation-folder", root=str(tmp_path))
    ds = build_dataset(cfg, "train")
    img, mask = ds[1]
    assert ds.classes == ["sky", "road", "car"] and img.dtype == torch.uint8 and img.shape[0] == 3
    assert mask.dtype == torch.int64 and tuple(mask.shape) == tuple(img.shape[1:]) and int(mask.max()) <= 2


def test_missing_or_mismatched_mask_and_unreadable_image_name_the_file(tmp_path: Path) -> None:
    _write(tmp_path, "images", "masks", "train", 2, classes=3)
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    cfg = DataConfig(dataset="segmentation-folder", root=str(tmp_path))
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(tmp_path / "masks" / "train" / "1.png")
    with pytest.raises(UserError, match=r"mask .*1\.png is 7x5 but its image .*1\.jpg is"):
        build_dataset(cfg, "train")[1]
    (tmp_path / "images" / "train" / "0.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=r"image .*0\.jpg is unusable"):
        build_dataset(cfg, "train")[0]
    (tmp_path / "images" / "train" / "2.jpg").write_bytes(
        (tmp_path / "images" / "train" / "1.jpg").read_bytes()
    )
    with pytest.raises(UserError, match=r"image .*2\.jpg has no mask .*2\.png"):
        build_dataset(cfg, "train")


def test_digit_scenes_seg() -> None:
    cfg = DataConfig(dataset="digit-scenes-seg", scenes=(6, 3), scene_size=48)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert (len(train), len(val)) == (6, 3) and train.classes[0] == "background" and len(train.classes) == 11
    img, mask = train[2]
    assert (
        img.shape == (3, 48, 48) and mask.shape == (48, 48) and 0 <= int(mask.min()) and int(mask.max()) <= 10
    )
    again_img, again_mask = build_dataset(cfg, "train")[2]
    assert torch.equal(img, again_img) and torch.equal(mask, again_mask)  # a function of (split, index, seed)
    from convnext.data.digit_scenes import digit_scene, label_map

    ink = torch.from_numpy(label_map(digit_scene(2, split="train", seed=0, size=48)[1], (48, 48))).long()
    assert torch.equal(mask[ink > 0], ink[ink > 0])  # every ink pixel keeps its digit
    assert (mask > 0).sum() > (ink > 0).sum()  # and a 1 px rim around the strokes is the digit's too


def test_rescale_size_is_mmcv_keep_ratio() -> None:
    assert rescale_size(375, 500, (2048, 512)) == (512, 683)  # the short side reaches 512
    assert rescale_size(256, 2560, (2048, 512)) == (205, 2048)  # the long side stops at 2048
    assert rescale_size(64, 64, (256 * 0.5, 64 * 0.5)) == (32, 32)


def _coded_pair(h: int, w: int, classes: int = 5, block: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A mask of ``block``-px squares of classes and an image whose red channel is 40 x the class: the
    pixel says its own label."""
    g = torch.Generator().manual_seed(1)
    coarse = torch.randint(0, classes, (h // block + 1, w // block + 1), generator=g)
    mask = coarse.repeat_interleave(block, 0).repeat_interleave(block, 1)[:h, :w]
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    img[0] = (mask * 40).to(torch.uint8)
    img[1] = 100
    return img, mask


def _decode(x: torch.Tensor) -> torch.Tensor:
    red = (x[0] * STD[0] + MEAN[0]) * 255
    return torch.round(red / 40).long()


@pytest.mark.parametrize("seed", range(6))
def test_train_pipeline_keeps_image_and_mask_aligned(seed: int) -> None:
    """No resize (ratio 1, the image's own scale): after crop, flip and padding every labelled pixel still
    carries its label in the image, and the padding is 255 in the mask and 0 (the mean) in the image."""
    img, mask = _coded_pair(40, 56)
    cfg = DataConfig(
        img_size=48,
        seg_scale=(56, 40),
        seg_ratio_range=(1.0, 1.0),
        cat_max_ratio=1.0,
        hflip=0.5,
        photometric=False,
    )
    torch.manual_seed(seed)
    x, y = SegTrainTransform(cfg)(img, mask)
    assert x.shape == (3, 48, 48) and y.shape == (48, 48) and y.dtype == torch.int64
    labelled = y != IGNORE_INDEX
    assert torch.equal(_decode(x)[labelled], y[labelled])
    assert labelled[:40].all() and not labelled[40:].any()  # 40 rows of image, 8 padded at the bottom
    assert torch.equal(x[:, 40:], torch.zeros(3, 8, 48))


@pytest.mark.parametrize("seed", range(4))
def test_train_pipeline_resized_stays_aligned(seed: int) -> None:
    """With mmseg's random rescale (0.5-2x): bilinear image, nearest mask; they agree but on block edges."""
    img, mask = _coded_pair(64, 64, block=16)
    cfg = DataConfig(img_size=48, seg_scale=(256, 64), photometric=False, cat_max_ratio=1.0)
    torch.manual_seed(seed)
    x, y = SegTrainTransform(cfg)(img, mask)
    labelled = y != IGNORE_INDEX
    agree = (_decode(x)[labelled] == y[labelled]).float().mean()
    assert agree > 0.9, float(agree)


def test_photometric_distortion_changes_colours_only() -> None:
    img, mask = _coded_pair(32, 32)
    cfg = DataConfig(
        img_size=32, seg_scale=(32, 32), seg_ratio_range=(1.0, 1.0), hflip=0.0, cat_max_ratio=1.0
    )
    changed = 0
    for seed in range(8):
        torch.manual_seed(seed)
        x, y = SegTrainTransform(cfg)(img, mask)
        assert torch.equal(y, mask)
        changed += int(not torch.allclose(_decode(x).float(), mask.float()))
    assert changed >= 4  # each of its four distortions is drawn with probability 0.5


def test_crop_redraws_while_one_class_dominates() -> None:
    """cat_max_ratio 0.75 (mmseg's): a crop that is nearly all one class is drawn again (up to 10 times)."""
    mask = torch.zeros(128, 128, dtype=torch.long)
    mask[60:100, 60:100] = 1  # one object
    img = torch.zeros(3, 128, 128, dtype=torch.uint8)
    kw = {"img_size": 32, "seg_scale": (128, 128), "seg_ratio_range": (1.0, 1.0), "photometric": False}

    def mixed(ratio: float) -> int:
        t = SegTrainTransform(DataConfig(cat_max_ratio=ratio, **kw))
        n = 0
        for seed in range(20):
            torch.manual_seed(seed)
            _, y = t(img, mask)
            n += int(torch.bincount(y.flatten()).max() < 0.75 * y.numel())
        return n

    assert mixed(0.75) > mixed(1.0) + 5, (mixed(0.75), mixed(1.0))
