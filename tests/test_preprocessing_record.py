"""Issue 19: the eval settings of any weights travel as one ``Preprocessing`` record, from the file that
holds them (a Hugging Face or timm folder, a registry tag, a run) to the model ``load_for_inference``
returns; timm's dict is only a view of it at the timm boundary (presets, ``pretrained_cfg``)."""

from __future__ import annotations

import json
from pathlib import Path

import convnext
from convnext.data.preprocessing import Preprocessing
from convnext.inference.loading import load_for_inference
from convnext.weights.files import hf_preprocessing
from convnext.weights.load import prepare
from convnext.weights.write import write


def test_a_hugging_face_processor_reads_as_the_record(tmp_path: Path) -> None:
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"size": {"shortest_edge": 224}, "crop_pct": 0.9, "resample": 2, "image_mean": [0.5] * 3})
    )
    assert hf_preprocessing(tmp_path) == Preprocessing(
        img_size=224, crop_pct=0.9, crop_mode="center", interpolation="bilinear", mean=(0.5,) * 3
    )
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 384}}))
    squash = hf_preprocessing(tmp_path)  # transformers warps from 384 px whatever crop_pct says
    assert squash is not None and (squash.img_size, squash.crop_mode, squash.crop_pct) == (384, "squash", 1.0)


def test_checkpoint_info_and_load_for_inference_carry_the_record(tmp_path: Path) -> None:
    model = convnext.create_model("convnext_atto", num_classes=2)
    pre = Preprocessing(img_size=384, crop_pct=1.0, crop_mode="squash", interpolation="bicubic")
    folder = tmp_path / "hf"
    write(model.state_dict(), folder, "hf", arch="convnext_atto", class_names=["cat", "dog"],
          data_config=pre.to_timm(), source="t")  # fmt: skip
    info = prepare(str(folder)).info
    assert isinstance(info.preprocessing, Preprocessing) and info.preprocessing == pre
    assert info.data_config == pre.to_timm()  # timm's view, for presets and pretrained_cfg
    loaded = load_for_inference(str(folder))
    assert Preprocessing.of(loaded.data) == pre
