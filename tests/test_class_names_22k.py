"""ImageNet-22k heads print WordNet's words, not "class N" (#21): the shipped list is timm's 21841 synsets
(ImageNet fall 2011, sorted wnids: the order of the official ConvNeXt 22k head and timm's ``*.fb_in22k``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import convnext
from convnext.cli.main import main
from convnext.data.classes import (
    IMAGENET22K_CLASSES,
    default_class_names,
    imagenet1k_descriptions,
    imagenet22k_descriptions,
    imagenet22k_wnids,
)


def test_shipped_22k_list_is_timms_imagenet22k_order() -> None:
    info = pytest.importorskip("timm.data").ImageNetInfo("imagenet22k")
    wnids = imagenet22k_wnids()
    assert len(wnids) == len(set(wnids)) == IMAGENET22K_CLASSES == info.num_classes()
    assert wnids == sorted(wnids)  # ImageFolder's order over fall11's 21841 synset folders
    assert wnids == [info.index_to_label_name(i) for i in range(IMAGENET22K_CLASSES)]
    words = imagenet22k_descriptions()
    for i in (0, 1234, 15000, IMAGENET22K_CLASSES - 1):
        assert words[i] == info.index_to_description(i)
    assert default_class_names(21841)[0] == "organism" and len(default_class_names(1000)) == 1000
    assert default_class_names(10) is None


def test_22k_head_predicts_and_prints_wordnet_words(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A nameless 21841-class checkpoint: predict prints the winning class's words (CLI, text and --json),
    and create_model's pretrained_cfg carries the 22k names."""
    model = convnext.create_model("convnext_atto", num_classes=IMAGENET22K_CLASSES)
    winner = 15000
    with torch.no_grad():
        model.head.bias.zero_()
        model.head.bias[winner] = 1000.0  # the same top-1 whatever the image
    weights = tmp_path / "in22k.pth"
    torch.save(model.state_dict(), weights)
    img = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (120, 30, 200)).save(img)
    words = imagenet22k_descriptions()[winner]
    assert words != imagenet1k_descriptions()[0] and "class" not in words

    rc = main(["predict", str(img), "--weights", str(weights), "--img-size", "32", "--topk", "1"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and out[1].startswith(f"{words:<75} (100.00%)"), out
    rc = main(["predict", str(img), "--weights", str(weights), "--img-size", "32", "--topk", "1", "--json"])
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert rc == 0 and words in json.dumps(row), row
    cfg = convnext.create_model("convnext_atto", pretrained=weights).pretrained_cfg
    assert cfg["label_names"][winner] == words.split(",")[0]
