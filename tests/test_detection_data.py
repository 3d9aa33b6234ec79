"""Detection data (data/coco.py): a COCO-layout folder written here (polygons, RLE compressed and not,
iscrowd, an image without annotations, custom split names) read as pycocotools reads it; boxes and masks
flip with the image; the digit scenes' COCO ground truth is their own boxes and masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from convnext.data.coco import BACKGROUND, CocoDetection, DigitScenes, collate, label_to_category
from convnext.data.config import DataConfig
from convnext.errors import UserError

CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "ring"}, {"id": 9, "name": "unused"}]


def write_coco(root: Path, split: str = "train2017", n: int = 6, size: tuple[int, int] = (48, 64)) -> Path:
    """``n`` images of ``size`` (H, W) in ``root/split`` with ``annotations/instances_<split>.json``: a square
    (polygon), a ring (compressed RLE) on every image, an uncompressed-RLE crowd region on image 2, and
    image ``n`` (the last) without annotations. Category ids 3, 7, 9 (9 unused): labels 1, 2, 3."""
    h, w = size
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    rng = np.random.default_rng(len(split))
    images, anns = [], []
    for i in range(1, n + 1):
        img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        entry = {"id": 100 + i, "file_name": f"{i:04d}.png", "height": h, "width": w}
        images.append(entry)
        if i == n:
            Image.fromarray(img).save(root / split / entry["file_name"])
            continue
        x, y, s = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2)), int(rng.integers(8, 16))
        img[y : y + s, x : x + s] = (200, 40, 40)
        poly = [x, y, x + s, y, x + s, y + s, x, y + s]
        anns.append({"id": len(anns) + 1, "image_id": entry["id"], "category_id": 3, "iscrowd": 0,
                     "segmentation": [poly], "bbox": [x, y, s, s], "area": s * s})  # fmt: skip
        ring = np.zeros((h, w), np.uint8)
        cx, cy = int(rng.integers(w // 2, w - 10)), int(rng.integers(h // 2, h - 10))
        yy, xx = np.mgrid[:h, :w]
        d = np.hypot(yy - cy, xx - cx)
        ring[(d > 3) & (d < 8)] = 1
        img[ring.astype(bool)] = (40, 200, 40)
        rle = mask_util.encode(np.asfortranarray(ring))
        bbox = [float(v) for v in mask_util.toBbox(rle)]
        rle["counts"] = rle["counts"].decode("ascii")
        anns.append({"id": len(anns) + 1, "image_id": entry["id"], "category_id": 7, "iscrowd": 0,
                     "segmentation": rle, "bbox": bbox, "area": float(ring.sum())})  # fmt: skip
        if i == 2:  # a crowd region as uncompressed RLE (counts a list, COCO's crowd format)
            crowd = np.zeros((h, w), np.uint8)
            crowd[:6, :10] = 1
            flat = np.asfortranarray(crowd).flatten(order="F")
            counts, last, run = [], 0, 0
            for v in flat:
                if v != last:
                    counts.append(run)
                    run, last = 0, v
                run += 1
            counts.append(run)
            anns.append({"id": len(anns) + 1, "image_id": entry["id"], "category_id": 7, "iscrowd": 1,
                         "segmentation": {"size": [h, w], "counts": counts}, "bbox": [0, 0, 10, 6],
                         "area": 60})  # fmt: skip
        Image.fromarray(img).save(root / split / entry["file_name"])
    doc = {"images": images, "annotations": anns, "categories": CATEGORIES}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root


def test_coco_layout_is_read_as_pycocotools_reads_it(tmp_path: Path) -> None:
    root = write_coco(tmp_path / "coco")
    gt = COCO(str(root / "annotations" / "instances_train2017.json"))
    train = CocoDetection(root, "train", train=True)
    val = CocoDetection(root, "train", train=False)  # the same folder as an eval split
    assert train.classes == [BACKGROUND, "square", "ring", "unused"]
    assert len(train) == 5 and len(val) == 6  # training drops the image without annotations
    assert label_to_category(train.classes, gt) == {1: 3, 2: 7, 3: 9}
    for i in range(len(val)):
        img, t = val[i]
        image_id = t["image_id"]
        assert img.dtype == torch.uint8 and tuple(img.shape) == (3, 48, 64)
        anns = [a for a in gt.imgToAnns.get(image_id, []) if not a["iscrowd"]]  # crowds are no targets
        assert t["labels"].tolist() == [{3: 1, 7: 2}[a["category_id"]] for a in anns]
        want = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                              a["bbox"][1] + a["bbox"][3]] for a in anns]).reshape(-1, 4)  # fmt: skip
        assert torch.equal(t["boxes"].as_subclass(torch.Tensor), want.float())
        masks = np.stack([gt.annToMask(a) for a in anns]) if anns else np.zeros((0, 48, 64))
        assert np.array_equal(t["masks"].numpy(), masks)
    images, targets = collate([val[0], val[1]])  # lists, as torchvision's references batch them
    assert len(images) == 2 and targets[1]["image_id"] == 102


def test_boxes_and_masks_flip_with_the_image(tmp_path: Path) -> None:
    root = write_coco(tmp_path / "coco")
    from convnext.data.coco import detection_transform

    plain = CocoDetection(root, "train", train=True)
    flipped = CocoDetection(root, "train", train=True, transform=detection_transform(True, 1.0))
    for i in range(len(plain)):
        (img, t), (fimg, ft) = plain[i], flipped[i]
        assert torch.equal(fimg, img.flip(-1)) and torch.equal(ft["masks"], t["masks"].flip(-1))
        w = img.shape[-1]
        b = t["boxes"].as_subclass(torch.Tensor)
        assert torch.equal(
            ft["boxes"].as_subclass(torch.Tensor),
            torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1),
        )
        for box, m in zip(ft["boxes"], ft["masks"]):  # each flipped mask lies inside its flipped box
            ys, xs = torch.nonzero(m, as_tuple=True)
            assert (
                xs.min() >= box[0] - 1
                and xs.max() <= box[2]
                and ys.min() >= box[1] - 1
                and ys.max() <= box[3]
            )
    assert ft["labels"].tolist() == t["labels"].tolist()


def test_custom_split_names_and_one_sentence_errors(tmp_path: Path) -> None:
    root = write_coco(tmp_path / "mine", split="fold1", n=3)
    ds = CocoDetection(root, "fold1", train=True)
    assert len(ds) == 2
    from convnext.data.coco import build_detection_dataset

    cfg = DataConfig(dataset="coco", root=str(root), train_split="fold1")
    assert len(build_detection_dataset(cfg, "fold1", train=True, masks=False)) == 2
    assert "masks" not in build_detection_dataset(cfg, "fold1", train=True, masks=False)[0][1]
    with pytest.raises(UserError, match="no val/ or val2017/ image folder"):
        CocoDetection(root, "val", train=False)
    (root / "val2017").mkdir()
    with pytest.raises(UserError, match="annotations/instances_val2017.json"):
        CocoDetection(root, "val", train=False)
    with pytest.raises(UserError, match="imagefolder is a classify dataset"):
        build_detection_dataset(DataConfig(dataset="imagefolder"), "train", train=True)


def test_digit_scenes_ground_truth_is_their_own_boxes_and_masks() -> None:
    ds = DigitScenes("val", 4, size=64)
    assert ds.classes == [BACKGROUND, *"0123456789"]
    gt = ds.coco
    assert sorted(gt.getImgIds()) == [1, 2, 3, 4]
    for i in range(4):
        img, t = ds[i]
        assert tuple(img.shape) == (3, 64, 64) and t["image_id"] == i + 1
        anns = gt.imgToAnns[i + 1]
        assert [a["category_id"] for a in anns] == t["labels"].tolist()  # category id = label
        for a, box, m in zip(anns, t["boxes"], t["masks"]):
            x, y, w, h = a["bbox"]
            assert box.tolist() == [x, y, x + w, y + h]
            assert np.array_equal(gt.annToMask(a), m.numpy())
