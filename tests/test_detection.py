"""Detection on a ConvNeXt backbone: torchvision's Mask/Faster R-CNN built by name, classification and
official mmdet checkpoints loading into it, and COCO mAP equal to pycocotools' own COCOeval."""

from __future__ import annotations

import copy
import logging
import socket

import numpy as np
import pytest
import torch
from torchvision.models.detection import FasterRCNN, MaskRCNN

import convnext
from convnext.errors import UserError
from convnext.models import build_model
from convnext.models.factory import VARIANTS, get_variant

pycocotools = pytest.importorskip("pycocotools")
from pycocotools import mask as mask_util  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from convnext.evaluation.coco import STAT_NAMES, CocoEvaluator, evaluate_coco  # noqa: E402

# small images (GeneralizedRCNNTransform resizes to these), a narrow FPN and few proposals: a fast test
SMALL = {
    "min_size": 64,
    "max_size": 96,
    "fpn_channels": 32,
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 50,
    "box_batch_size_per_image": 64,
    "box_detections_per_img": 10,
}


def _targets(masks: bool = True) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(3, 64, 80, generator=g), torch.rand(3, 72, 64, generator=g)]
    targets = []
    for img, boxes, labels in zip(
        imgs, ([[20.0, 10, 50, 30], [5, 30, 30, 60]], [[10.0, 10, 40, 50]]), ([1, 2], [3])
    ):
        b = torch.tensor(boxes)
        t = {"boxes": b, "labels": torch.tensor(labels)}
        if masks:
            m = torch.zeros(len(b), *img.shape[1:], dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(b.int().tolist()):
                m[i, y0:y1, x0:x1] = 1
            t["masks"] = m
        targets.append(t)
    return imgs, targets


def test_every_v1_v2_name_resolves_and_isotropic_does_not() -> None:
    for name, v in VARIANTS.items():
        for det in ("maskrcnn", "fasterrcnn"):
            if v.family == "isotropic":
                with pytest.raises(ValueError, match="unknown model"):
                    get_variant(f"{det}_{name}")
            else:
                assert get_variant(f"{det}_{name}").family == v.family
    m = convnext.create_model("fasterrcnn_convnextv2_atto", num_classes=4, **SMALL)
    assert isinstance(m, FasterRCNN) and not isinstance(m, MaskRCNN) and m.family == "v2"
    # the official COCO settings by default: drop path by size (tiny's 0.4), 1000 RPN training proposals
    d = build_model("fasterrcnn_convnext_tiny", num_classes=2)
    assert d.backbone.body.stages[-1][-1].drop_path.p == 0.4 and d.rpn._post_nms_top_n["training"] == 1000
    assert d.transform.min_size == (800,) and d.transform.max_size == 1333
    # layer decay: mmdet's get_num_layer_layer_wise with the tiny config's num_layers=6 (the rest: 7)
    layer_of, head = d.layer_ids()
    assert head == 7 and (d.family, d.reduction) == ("v1", 32)
    official = {
        "backbone.body.downsample_layers.0.0.weight": 0,
        "backbone.body.stages.0.2.gamma": 1,
        "backbone.body.downsample_layers.1.1.weight": 2,
        "backbone.body.stages.1.0.pwconv1.weight": 2,
        "backbone.body.downsample_layers.2.1.bias": 3,
        "backbone.body.stages.2.2.norm.weight": 3,
        "backbone.body.stages.2.3.dwconv.weight": 4,
        "backbone.body.stages.2.8.gamma": 5,
        "backbone.body.downsample_layers.3.1.weight": 6,
        "backbone.body.stages.3.2.pwconv2.bias": 6,
        "backbone.body.norm2.weight": 7,
        "backbone.fpn.inner_blocks.0.0.weight": 7,
        "rpn.head.conv.0.0.bias": 7,
    }
    assert set(official) <= dict(d.named_parameters()).keys()
    assert {k: layer_of(k) for k in official} == official


def test_maskrcnn_trains_and_predicts() -> None:
    torch.manual_seed(0)
    m = convnext.create_model("maskrcnn_convnext_atto", num_classes=4, **SMALL)
    assert isinstance(m, MaskRCNN) and m.backbone.out_channels == 32
    # the official COCO settings: layer scale 1.0, mask R-CNN tiny's drop path 0.4 scaled by size
    assert float(m.backbone.body.stages[0][0].gamma[0].detach()) == 1.0
    imgs, targets = _targets()
    m.train()
    losses = m(imgs, targets)
    assert set(losses) == {
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
        "loss_objectness",
        "loss_rpn_box_reg",
    }
    sum(losses.values()).backward()
    grad = m.backbone.body.downsample_layers[0][0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    m.eval()
    with torch.no_grad():
        out = m(imgs)
    assert len(out) == 2 and set(out[0]) == {"boxes", "labels", "scores", "masks"}
    assert out[1]["masks"].shape[-2:] == (72, 64)  # masks pasted back at the input's size


def test_backbone_is_the_classifier_with_per_stage_norms(tmp_path) -> None:
    torch.manual_seed(0)
    cls = build_model("convnext_atto", num_classes=10)
    path = tmp_path / "cls.pth"
    torch.save({"model": cls.state_dict()}, path)
    det = convnext.create_model("maskrcnn_convnext_atto", pretrained=str(path), num_classes=3, **SMALL).eval()
    body = det.backbone.body
    for k, v in cls.state_dict().items():
        if not k.startswith(("head.", "norm.")):
            assert torch.equal(body.state_dict()[k], v), k
    cls.eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        feats = body(x)
        ref = cls.forward_intermediates(x, intermediates_only=True)
        for i, (f, r) in enumerate(zip(feats, ref)):
            torch.testing.assert_close(f, getattr(body, f"norm{i}")(r))
        pyramid = det.backbone(x)
    assert list(pyramid) == ["0", "1", "2", "3", "pool"]
    assert [p.shape[-1] for p in pyramid.values()] == [24, 12, 6, 3, 2]
    # another library's classifier (timm's names) initialises the backbone too
    timm = pytest.importorskip("timm")
    peer = timm.create_model("convnext_atto", pretrained=False, num_classes=5).state_dict()
    det2 = convnext.create_model("fasterrcnn_convnext_atto", pretrained=peer, num_classes=3, **SMALL)
    assert torch.equal(det2.backbone.body.downsample_layers[0][0].weight, peer["stem.0.weight"])
    assert torch.equal(
        det2.backbone.body.stages[3][1].pwconv2.weight, peer["stages.3.blocks.1.mlp.fc2.weight"].flatten(1)
    )


# the official mmdet names of each of our (torchvision's) layers, written from mask_rcnn_convnext_fpn.py
_MMDET = {
    "rpn.head.conv.0.0.": "rpn_head.rpn_conv.",
    "rpn.head.cls_logits.": "rpn_head.rpn_cls.",
    "rpn.head.bbox_pred.": "rpn_head.rpn_reg.",
    "roi_heads.box_head.fc6.": "roi_head.bbox_head.shared_fcs.0.",
    "roi_heads.box_head.fc7.": "roi_head.bbox_head.shared_fcs.1.",
    "roi_heads.box_predictor.cls_score.": "roi_head.bbox_head.fc_cls.",
    "roi_heads.box_predictor.bbox_pred.": "roi_head.bbox_head.fc_reg.",
    "roi_heads.mask_predictor.conv5_mask.": "roi_head.mask_head.upsample.",
    "roi_heads.mask_predictor.mask_fcn_logits.": "roi_head.mask_head.conv_logits.",
}


def _official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict as the official mmdet checkpoint holds it (mmdet's names and class layout)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("backbone.body."):
            out["backbone." + k[len("backbone.body.") :]] = v
            continue
        if k.startswith("backbone.fpn."):
            _, _, kind, i, _, p = k.split(".")
            out[f"neck.{'lateral_convs' if kind == 'inner_blocks' else 'fpn_convs'}.{i}.conv.{p}"] = v
            continue
        if k.startswith("roi_heads.mask_head."):
            _, _, i, _, p = k.split(".")
            out[f"roi_head.mask_head.convs.{i}.conv.{p}"] = v
            continue
        prefix = next(p for p in _MMDET if k.startswith(p))
        name = _MMDET[prefix] + k[len(prefix) :]
        if "cls_score" in k:  # mmdet: the classes, then the background
            v = torch.cat([v[1:], v[:1]])
        elif "bbox_pred" in k and "roi_heads" in k:  # mmdet: no background box
            v = v[4:]
        elif "mask_fcn_logits" in k:  # mmdet: no background mask
            v = v[1:]
        out[name] = v
    return out


def test_official_mmdet_checkpoint_loads(tmp_path, caplog) -> None:
    torch.manual_seed(0)
    src = convnext.create_model("maskrcnn_convnext_atto", num_classes=4, **SMALL).eval()
    with torch.no_grad():  # mmdet predicts no background box or mask: those rows are zero here
        src.roi_heads.box_predictor.bbox_pred.weight[:4] = 0
        src.roi_heads.box_predictor.bbox_pred.bias[:4] = 0
        src.roi_heads.mask_predictor.mask_fcn_logits.weight[:1] = 0
        src.roi_heads.mask_predictor.mask_fcn_logits.bias[:1] = 0
    official = _official(src.state_dict())
    assert official["roi_head.bbox_head.fc_cls.weight"].shape[0] == 4  # 3 classes + background
    assert official["roi_head.bbox_head.fc_reg.weight"].shape[0] == 12
    assert official["rpn_head.rpn_cls.weight"].shape[0] == 3  # sigmoid: one logit per anchor
    path = tmp_path / "mask_rcnn_convnext_atto.pth"
    torch.save({"meta": {"CLASSES": ["a", "b", "c"]}, "state_dict": official}, path)
    m = convnext.create_model("maskrcnn_convnext_atto", pretrained=str(path), **SMALL).eval()
    assert m.pretrained_info.class_names == ["__background__", "a", "b", "c"]
    for k, v in src.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    imgs, _ = _targets()
    with torch.no_grad():
        a, b = src(imgs), m(imgs)
    for x, y in zip(a, b):
        for key in x:
            torch.testing.assert_close(x[key], y[key])
    # another class count: the class-wise outputs start fresh, everything else loads
    m2 = convnext.create_model("maskrcnn_convnext_atto", pretrained=str(path), num_classes=7, **SMALL)
    assert torch.equal(m2.roi_heads.box_head.fc6.weight, src.roi_heads.box_head.fc6.weight)
    # a Cascade checkpoint: backbone, FPN and RPN map; its RoI heads do not (named once)
    cascade = {k: v for k, v in official.items() if not k.startswith("roi_head.")}
    cascade["roi_head.bbox_head.0.fc_cls.weight"] = torch.zeros(4, 1024)
    with caplog.at_level(logging.WARNING):
        m3 = convnext.create_model("fasterrcnn_convnext_atto", pretrained=cascade, num_classes=4, **SMALL)
    assert "no torchvision counterpart" in caplog.text and "start fresh" in caplog.text
    assert torch.equal(m3.rpn.head.cls_logits.weight, src.rpn.head.cls_logits.weight)


def test_rpn_anchors_are_the_official_configs_in_its_order() -> None:
    """mmdet's AnchorGenerator (strides 4-64, scale 8, ratios 0.5/1/2 as h/w, ratio-major, centred on the
    cell's corner) written out: torchvision's anchors are the same ones in the same order, rounded."""
    m = build_model("fasterrcnn_convnext_atto", num_classes=2)
    gen = m.rpn.anchor_generator
    for stride, cell in zip((4, 8, 16, 32, 64), gen.cell_anchors):
        h_ratios = torch.tensor([0.5, 1.0, 2.0]).sqrt()
        ws, hs = stride * 8 / h_ratios, stride * 8 * h_ratios
        mmdet = torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], 1)
        assert torch.equal(cell, mmdet.round()) and (cell - mmdet).abs().max() <= 0.5


def test_mask_rcnn_weights_into_faster_rcnn_drop_the_mask_head(tmp_path) -> None:
    src = convnext.create_model("maskrcnn_convnext_atto", num_classes=4, **SMALL)
    m = convnext.create_model("fasterrcnn_convnext_atto", pretrained=src.state_dict(), **SMALL)
    assert m.roi_heads.box_predictor.cls_score.out_features == 4
    assert torch.equal(m.roi_heads.box_head.fc7.weight, src.roi_heads.box_head.fc7.weight)
    broken = {k: v for k, v in src.state_dict().items() if "fpn.layer_blocks.2" not in k}
    with pytest.raises(
        UserError, match=r"does not fit fasterrcnn_convnext_atto: 0 shape mismatches, 2 missing"
    ):
        convnext.create_model("fasterrcnn_convnext_atto", pretrained=broken, **SMALL)


# ---- COCO metrics -------------------------------------------------------------------------------------


def _gt() -> dict:
    crowd = np.zeros((48, 64), dtype=np.uint8)
    crowd[30:46, 40:60] = 1
    flat = crowd.flatten(order="F")  # COCO's uncompressed RLE of a crowd: column-major runs from a 0 run
    runs = np.diff(np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]).tolist()
    crowd_rle = {"size": [48, 64], "counts": ([0] if flat[0] else []) + runs}

    def poly(x0, y0, x1, y1, cat, img, i, iscrowd=0):
        w, h = x1 - x0, y1 - y0
        return {
            "id": i,
            "image_id": img,
            "category_id": cat,
            "bbox": [x0, y0, w, h],
            "area": float(w * h),
            "iscrowd": iscrowd,
            "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
        }

    anns = [
        poly(2, 2, 20, 30, 1, 1, 1),
        poly(30, 5, 60, 25, 2, 1, 2),
        poly(5, 5, 40, 40, 1, 2, 3),
        poly(10, 30, 14, 34, 2, 3, 4),  # a small object
        {
            "id": 5,
            "image_id": 3,
            "category_id": 1,
            "bbox": [40, 30, 20, 16],
            "area": 320.0,
            "iscrowd": 1,
            "segmentation": crowd_rle,
        },
    ]
    images = [{"id": i, "width": 64, "height": 48, "file_name": f"{i}.jpg"} for i in (1, 2, 3)]
    cats = [{"id": 1, "name": "square"}, {"id": 2, "name": "blob"}]
    return {"images": images, "annotations": anns, "categories": cats}


def _perfect(gt: dict) -> dict[int, dict[str, torch.Tensor]]:
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    coco.createIndex()
    preds: dict[int, dict[str, list]] = {
        i["id"]: {"boxes": [], "labels": [], "masks": []} for i in gt["images"]
    }
    for a in gt["annotations"]:
        if a["iscrowd"]:
            continue
        x, y, w, h = a["bbox"]
        p = preds[a["image_id"]]
        p["boxes"].append([x, y, x + w, y + h])
        p["labels"].append(a["category_id"])
        p["masks"].append(torch.from_numpy(coco.annToMask(a)).float()[None])
    return {
        i: {
            "boxes": torch.tensor(p["boxes"], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(p["labels"], dtype=torch.int64),
            "scores": torch.ones(len(p["labels"])),
            "masks": torch.stack(p["masks"]) if p["masks"] else torch.zeros(0, 1, 48, 64),
        }
        for i, p in preds.items()
    }


def test_perfect_predictions_score_one() -> None:
    out = evaluate_coco(_gt(), _perfect(_gt()))
    for iou in ("bbox", "segm"):
        assert out[iou]["map"] == pytest.approx(1.0) and out[iou]["map_50"] == pytest.approx(1.0)
        assert out[iou]["mar_100"] == pytest.approx(1.0)


def test_evaluator_accumulates_batches_and_counts_a_repeat_once() -> None:
    gt, preds = _gt(), _perfect(_gt())
    ev = CocoEvaluator(gt)
    ev.update({1: preds[1]})
    ev.update({2: preds[2], 3: preds[3]})
    ev.update({1: {**preds[1], "boxes": preds[1]["boxes"] + 9}})  # a padded sampler's repeat: ignored
    assert ev.compute() == evaluate_coco(gt, preds)
    assert ev.compute()["segm"]["map"] == pytest.approx(1.0)
    with pytest.raises(UserError, match=r"image ids \[42\]"):
        ev.update({42: preds[1]})


def test_contiguous_labels_map_to_category_ids() -> None:
    gt = _gt()
    preds = _perfect(gt)  # labels 1, 2
    ids = {1: 3, 2: 7}
    for a in gt["annotations"]:
        a["category_id"] = ids[a["category_id"]]
    for c in gt["categories"]:
        c["id"] = ids[c["id"]]
    assert evaluate_coco(gt, preds, iou_types=("bbox",))["bbox"]["map"] == 0.0
    assert evaluate_coco(gt, preds, iou_types=("bbox",), label_to_category=ids)["bbox"]["map"] == 1.0


def test_numbers_are_cocoevals_on_the_same_predictions() -> None:
    gt = _gt()
    g = torch.Generator().manual_seed(1)
    preds = _perfect(gt)
    results = {"bbox": [], "segm": []}  # the same predictions as a COCO results file, written here
    for img, p in preds.items():
        p["boxes"] = p["boxes"] + torch.randn(p["boxes"].shape, generator=g) * 3  # off by a few pixels
        p["masks"] = torch.roll(p["masks"], shifts=2, dims=-1) * 0.9
        p["scores"] = torch.rand(len(p["scores"]), generator=g)
        p["labels"] = p["labels"].clone()
        if img == 2:
            p["labels"][0] = 2  # a wrong class
        for box, s, lab, m in zip(
            p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist(), p["masks"]
        ):
            x0, y0, x1, y1 = box
            base = {"image_id": img, "category_id": lab, "score": s}
            results["bbox"].append({**base, "bbox": [x0, y0, x1 - x0, y1 - y0]})
            rle = mask_util.encode(np.asfortranarray((m[0] > 0.5).numpy().astype(np.uint8)))
            results["segm"].append({**base, "segmentation": rle})
    ours = evaluate_coco(gt, preds)
    for iou in ("bbox", "segm"):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(results[iou]), iou)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert [ours[iou][n] for n in STAT_NAMES] == pytest.approx(list(ev.stats), abs=1e-12)
        assert 0 < ours[iou]["map"] < 1


def test_no_detections_is_zero_not_a_crash() -> None:
    empty = {
        i: {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.int64),
            "scores": torch.zeros(0),
            "masks": torch.zeros(0, 1, 48, 64),
        }
        for i in (1, 2, 3)
    }
    out = evaluate_coco(_gt(), empty)
    assert out["bbox"]["map"] == 0.0 and out["segm"]["mar_100"] == 0.0


_RANK_SCRIPT = """
import json, sys, torch, torch.distributed as dist
from convnext.evaluation.coco import evaluate_coco
gt, preds = json.load(open(sys.argv[1]))
preds = {int(k): {n: torch.tensor(v) for n, v in p.items()} for k, p in preds.items()}
dist.init_process_group("gloo")
rank = dist.get_rank()
mine = {k: preds[k] for k in ((1, 2) if rank == 0 else (3, 1))}  # padded: image 1 on both ranks
print(json.dumps(evaluate_coco(gt, mine)))
dist.destroy_process_group()
"""


def test_two_ranks_count_each_image_once(tmp_path) -> None:
    import json
    import os
    import subprocess
    import sys

    gt, preds = _gt(), _perfect(_gt())
    preds[1]["scores"] = torch.tensor([0.3, 0.9])
    preds[3]["boxes"] = preds[3]["boxes"] + 2
    data = tmp_path / "data.json"
    data.write_text(json.dumps([gt, {k: {n: t.tolist() for n, t in p.items()} for k, p in preds.items()}]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RANK_SCRIPT, str(data)],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    got = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    single = evaluate_coco(gt, preds)
    assert got[0] == got[1] == single
    assert single["bbox"]["map"] < 1  # the moved boxes and swapped scores count, once each
