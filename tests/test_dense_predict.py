"""`convnext predict` with detection and segmentation models (inference/dense.py): the CLI's JSON and figures
against the model run by hand on a real photograph, COCO RLE masks against pycocotools' decoding, the
names (the checkpoint's, COCO's for 91 labels, ADE20K's for 150 classes) and what goes to the classifier.

Tiny models (a 1-1-1-1 block ConvNeXt of 8-64 channels), weights made non-trivial (norms, BatchNorm running
statistics), 64 px inputs. The helpers here are shared by test_dense_export.py and test_dense_serve.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import IMAGENET_SAMPLE

from convnext.errors import UserError
from convnext.hub import create_model

BIN = Path(sys.executable).parent
SEG = "upernet_convnext_atto"
DET = "maskrcnn_convnext_atto"
TINY = {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}
SEG_OPTS = {**TINY, "channels": 16, "aux_channels": 8}
DET_OPTS = {**TINY, "fpn_channels": 16}
DET_CLASSES = ["circle", "square"]


def nontrivial_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Norm weights away from 1/0 and BatchNorm running statistics away from 0/1, so that a dropped or
    merged norm changes the output (freshly initialised ones are the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model.eval()


def seg_checkpoint(path: Path, num_classes: int = 150) -> Path:
    """A tiny UperNet (mmseg's names) with ``num_classes`` classes and layer scale 1, saved as mmseg saves."""
    if not path.exists():
        torch.manual_seed(1)
        model = nontrivial_(create_model(SEG, num_classes=num_classes, **SEG_OPTS))
        torch.save({"state_dict": model.state_dict()}, path)
    return path


def det_checkpoint(path: Path) -> Path:
    """A tiny Mask R-CNN with two classes (and the background) named in mmdet's ``meta.CLASSES``."""
    if not path.exists():
        torch.manual_seed(2)
        model = nontrivial_(create_model(DET, num_classes=len(DET_CLASSES) + 1, **DET_OPTS))
        torch.save({"state_dict": model.state_dict(), "meta": {"CLASSES": DET_CLASSES}}, path)
    return path


def photo() -> Path:
    """A real photograph (500 x 375 tench), from the shared ImageNet sample."""
    p = IMAGENET_SAMPLE / "n01440764" / "n01440764_tench.JPEG"
    if not p.is_file():
        pytest.skip(f"shared ImageNet sample not found at {IMAGENET_SAMPLE}")
    return p


def small_photo(path: Path, size: tuple[int, int] = (160, 120)) -> Path:
    """The photograph resized to ``size`` (W, H): a square one is what an exported segmenter's fixed input
    sees unchanged; a small one keeps a detector's 100 pasted masks cheap."""
    from PIL import Image

    if not path.exists():
        Image.open(photo()).convert("RGB").resize(size).save(path)
    return path


def convnext(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "convnext"), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def reference_segmentation(model: torch.nn.Module, img: torch.Tensor, short: int) -> torch.Tensor:
    """mmseg's single-scale test by hand: keep-ratio resize to short side ``short``, ImageNet mean/std,
    logits bilinearly back to the image, argmax."""
    from torchvision.transforms.v2.functional import resize

    h, w = img.shape[1:]
    s = short / min(h, w)
    x = resize(img, [round(h * s), round(w * s)], antialias=True).float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        3, 1, 1
    )
    with torch.no_grad():
        logits = model(x[None])
    return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)[0].argmax(0)


def test_segmentation_predict_cli_json_figures_and_label_map(tmp_path: Path) -> None:
    from PIL import Image

    from convnext.data.images import load_image
    from convnext.inference.dense import ade20k_classes

    weights = seg_checkpoint(tmp_path / "upernet.pth")
    picture = small_photo(tmp_path / "tench.png")
    out = tmp_path / "figures"
    r = convnext(
        "predict", str(picture), "--weights", str(weights), "--model", SEG, "--img-size", "64",
        "--out", str(out), "--label-map", "--json", "-", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout.strip().splitlines()[-1])
    img = load_image(str(picture))
    assert obj["task"] == "segmentation" and obj["size"] == [img.shape[1], img.shape[2]]
    names = ade20k_classes()[0]
    assert all(c["name"] == names[c["index"]] for c in obj["classes"])  # ADE20K's names for 150 classes
    assert abs(sum(c["fraction"] for c in obj["classes"]) - 1) < 1e-4
    # the label map is the model's own argmax on the photo
    model = create_model(SEG, pretrained=str(weights)).eval()
    ref = reference_segmentation(model, img, 64)
    got = torch.from_numpy(__import__("numpy").asarray(Image.open(obj["files"]["labels"])).astype("int64"))
    assert got.shape == ref.shape
    assert (got == ref).float().mean() > 0.999
    counts = torch.bincount(ref.flatten(), minlength=150).float() / ref.numel()
    for c in obj["classes"]:
        assert abs(c["fraction"] - float(counts[c["index"]])) < 2e-3
    for kind in ("overlay", "mask"):  # the figure: the photo and a legend beside it
        fig = Image.open(obj["files"][kind])
        assert fig.width > 2 * img.shape[2] and fig.height > 200


def test_detection_predict_boxes_names_and_rle_masks(tmp_path: Path) -> None:
    import numpy as np
    from pycocotools import mask as mask_utils

    from convnext.data.images import load_image
    from convnext.inference.dense import load_dense, predict_dense, prediction_json

    weights = det_checkpoint(tmp_path / "maskrcnn.pth")
    picture = small_photo(tmp_path / "tench.png")
    dense = load_dense(str(weights), DET, img_size=64)
    assert dense.names == ["__background__", *DET_CLASSES]
    (pred,) = predict_dense(dense, [str(picture)], out_dir=tmp_path / "out", score_threshold=0.3)
    obj = json.loads(json.dumps(prediction_json(pred)))
    # the reference: torchvision's detector itself, on the image scaled to [0, 1]
    model = create_model(DET, pretrained=str(weights)).eval()
    model.transform.min_size, model.transform.max_size = (64,), 107
    img = load_image(str(picture))
    with torch.no_grad():
        ref = model([img.float() / 255])[0]
    keep = ref["scores"] >= 0.3
    assert len(obj["detections"]) == int(keep.sum()) > 0
    for d, box, label, score, mask in zip(
        obj["detections"], ref["boxes"][keep], ref["labels"][keep], ref["scores"][keep], ref["masks"][keep]
    ):
        assert d["box"] == pytest.approx(box.tolist(), abs=0.01)  # pixels of the original image
        assert d["label"] == int(label) and d["name"] == DET_CLASSES[int(label) - 1]
        assert d["score"] == pytest.approx(float(score), abs=1e-6)
        decoded = mask_utils.decode({"size": d["mask"]["size"], "counts": d["mask"]["counts"].encode()})
        assert decoded.shape == tuple(img.shape[1:])
        assert np.array_equal(decoded.astype(bool), (mask[0] > 0.5).numpy())
    drawn = Path(obj["files"]["detections"])
    assert drawn.stat().st_size > 5_000


def test_names_palette_and_what_is_dense(tmp_path: Path) -> None:
    from convnext.inference.dense import (
        DETECTION,
        SEGMENTATION,
        class_names_for,
        dense_task,
        palette_for,
    )

    assert class_names_for(DETECTION, 91, None)[1] == "person"  # torchvision's COCO category ids
    assert class_names_for(SEGMENTATION, 150, None)[:3] == ["wall", "building", "sky"]
    assert class_names_for(SEGMENTATION, 3, None) == ["class 0", "class 1", "class 2"]
    assert class_names_for(SEGMENTATION, 2, ["road", "car"]) == ["road", "car"]
    assert palette_for(150)[:2] == [(120, 120, 120), (180, 120, 120)]  # mmseg's ADE20K palette
    assert len(set(palette_for(40))) == 40
    assert dense_task(str(seg_checkpoint(tmp_path / "u.pth", 4)), None) == SEGMENTATION
    assert dense_task(None, "fasterrcnn_convnext_tiny") == DETECTION
    assert dense_task(None, "convnext_tiny") is None
    classifier = tmp_path / "classifier.pth"
    torch.save(create_model("convnext_atto", num_classes=3, **TINY).state_dict(), classifier)
    assert dense_task(str(classifier), None) is None


def test_dense_flags_are_refused_in_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from convnext.cli.main import main

    seg = seg_checkpoint(tmp_path / "u.pth", 4)
    assert main(["predict", str(photo()), "--weights", str(seg), "--model", SEG, "--label-map"]) == 2
    assert "--label-map needs --out" in capsys.readouterr().err
    assert main(["predict", str(photo()), "--model", SEG, "--score-threshold", "2"]) == 2
    assert "--score-threshold must be between 0 and 1" in capsys.readouterr().err
    classifier = tmp_path / "classifier.pth"
    torch.save(create_model("convnext_atto", num_classes=3, **TINY).state_dict(), classifier)
    args = ["predict", str(photo()), "--weights", str(classifier), "--model", "convnext_atto", "--out", "x"]
    assert main(args) == 2
    assert "a classifier: --cam" in capsys.readouterr().err


def test_a_training_run_folder_gives_its_model_options_and_class_names(tmp_path: Path) -> None:
    """A run folder of `convnext train` (config.yaml's model name and options, checkpoints/last.pth in the
    training container with its class names) predicts with the run's classes."""
    import yaml

    from convnext.inference.dense import load_dense, predict_dense

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    model = nontrivial_(create_model(SEG, num_classes=3, **SEG_OPTS))
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": SEG, "options": SEG_OPTS}}))
    ckpt = {"format": "convnext-train", "model": model.state_dict(), "class_names": ["road", "car", "sky"]}
    torch.save(ckpt, run / "checkpoints" / "last.pth")
    dense = load_dense(str(run), img_size=64)
    assert dense.arch == SEG and dense.names == ["road", "car", "sky"]
    assert dense.source == str(run / "checkpoints" / "last.pth")
    picture = small_photo(tmp_path / "tench.png")
    (pred,) = predict_dense(dense, [str(picture)])
    from convnext.data.images import load_image

    assert torch.equal(pred.label_map, reference_segmentation(model, load_image(str(picture)), 64))
    with pytest.raises(UserError, match=r"last.pth has no EMA weights"):  # --ema of predict / serve
        load_dense(str(run), img_size=64, ema=True)


@pytest.mark.slow  # transformers' import and model: ~15 s on the shared host; CI has the mmseg-layout tests
def test_a_transformers_upernet_folder_predicts_as_transformers(tmp_path: Path) -> None:
    """A Hugging Face UperNet folder (save_pretrained, ConvNeXt backbone): its id2label names the classes and
    the label map is transformers' own logits' argmax on the photo."""
    from test_upernet import _hf_upernet

    from convnext.data.images import load_image
    from convnext.inference.dense import SEGMENTATION, dense_task, load_dense, predict_dense

    hf = _hf_upernet(num_labels=3)
    hf.config.id2label = {0: "wall", 1: "floor", 2: "sky"}
    hf.config.label2id = {v: k for k, v in hf.config.id2label.items()}
    hf.save_pretrained(tmp_path / "hf")
    assert dense_task(str(tmp_path / "hf"), None) == SEGMENTATION
    dense = load_dense(str(tmp_path / "hf"), SEG, img_size=64)
    assert dense.names == ["wall", "floor", "sky"]
    picture = small_photo(tmp_path / "tench.png")
    (pred,) = predict_dense(dense, [str(picture)])
    ref = reference_segmentation(lambda x: hf(pixel_values=x).logits, load_image(str(picture)), 64)
    assert (pred.label_map == ref).float().mean() > 0.999
