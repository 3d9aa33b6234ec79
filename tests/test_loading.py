"""convnext.load_for_inference on a training run: its checkpoint file is read once (a ConvNeXt-XL training
checkpoint with optimizer state is gigabytes), and the recipe it records still shapes the model's eval
settings."""

from __future__ import annotations

from pathlib import Path

import torch

import convnext
import convnext.weights.load as weights_load
from convnext.engine.checkpoint import train_state
from convnext.recipe import TrainConfig, to_dict


def test_a_training_checkpoint_is_read_once(tmp_path: Path, monkeypatch) -> None:
    cfg = TrainConfig()
    cfg.model.name = "convnext_atto"
    cfg.data.img_size, cfg.data.crop_pct = 64, 0.9  # not the defaults: they must come from the recipe
    model = convnext.create_model("convnext_atto", num_classes=3)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = train_state(
        arch="convnext_atto", model=model.state_dict(), epoch=1, step=1, config=to_dict(cfg),
        class_names=["a", "b", "c"],
    )  # fmt: skip
    torch.save(ckpt, run / "checkpoints" / "last.pth")
    reads: list[str] = []
    real = weights_load.read_file

    def counting(path, *args, **kwargs):
        reads.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(weights_load, "read_file", counting)
    loaded = convnext.load_for_inference(str(run))
    assert reads == [str(run / "checkpoints" / "last.pth")]
    assert (loaded.data.img_size, loaded.data.crop_pct) == (64, 0.9)
    assert loaded.class_names == ["a", "b", "c"] and loaded.num_classes == 3
