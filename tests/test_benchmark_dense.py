"""``convnext benchmark --task segmentation | detection`` (bench/dense.py): the peers compute our function.

The real test is the equivalence: transformers' UperNet holding our weights gives our logits and our loss,
torchvision's Mask R-CNN over timm's ConvNeXt gives our FPN maps and, its heads being the same torchvision
modules, our detections. No timing is asserted (speed figures live in BENCHMARKS.md).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from convnext.bench.dense import (
    AUX_WEIGHT,
    IGNORE_INDEX,
    _randomise,
    dense_model_name,
    run_dense_benchmark,
    torchvision_detector,
    transformers_upernet,
)
from convnext.cli.main import main
from convnext.errors import UserError
from convnext.models import build_model

SMALL_HEAD = {"channels": 32, "aux_channels": 16}  # UperNet's 512-wide head is most of its time


@pytest.mark.parametrize(
    "name", ["upernet_convnext_atto", pytest.param("upernet_convnextv2_atto", marks=pytest.mark.slow)]
)
def test_transformers_upernet_computes_our_logits_and_loss(name: str) -> None:
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    ours = build_model(name, num_classes=7, **SMALL_HEAD)
    _randomise(ours)
    peer = transformers_upernet(ours)
    ours.eval(), peer.eval()
    x = torch.randn(2, 3, 64, 96)  # not square: H and W must not be swapped anywhere
    labels = torch.randint(0, 7, (2, 64, 96))
    labels[:, :4] = IGNORE_INDEX
    with torch.no_grad():
        out = peer(pixel_values=x, labels=labels)
        logits, aux = ours.forward_all(x)
    torch.testing.assert_close(logits, out.logits, atol=1e-4, rtol=0)
    ref_loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
    ref_loss = ref_loss + AUX_WEIGHT * F.cross_entropy(aux, labels, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, ref_loss, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(
    "name", ["maskrcnn_convnext_atto", pytest.param("fasterrcnn_convnextv2_atto", marks=pytest.mark.slow)]
)
def test_torchvision_detector_over_timm_computes_our_function(name: str) -> None:
    pytest.importorskip("timm")
    torch.manual_seed(0)
    opts = {"min_size": 96, "max_size": 96, "fpn_channels": 32, "box_score_thresh": 0.0}
    opts.update(rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100, box_detections_per_img=10)
    ours = build_model(name, num_classes=5, **opts)
    _randomise(ours)
    peer = torchvision_detector(ours, name, opts)
    ours.eval(), peer.eval()
    assert peer.rpn._post_nms_top_n == ours.rpn._post_nms_top_n  # the official 1000 training proposals
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        ref, out = ours.backbone(x), peer.backbone(x)
        assert list(ref) == list(out) == ["0", "1", "2", "3", "pool"]
        for k in ref:
            torch.testing.assert_close(out[k], ref[k], atol=1e-4, rtol=0)
        dets, peer_dets = ours(list(x)), peer(list(x))
    for d, p in zip(dets, peer_dets):
        assert len(d["boxes"]) > 0
        torch.testing.assert_close(p["boxes"], d["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(p["scores"], d["scores"], atol=1e-4, rtol=0)
        assert torch.equal(p["labels"], d["labels"])


@pytest.mark.slow
def test_dense_train_step_runs_for_both_peers() -> None:
    """A training step (loss, backward, AdamW) of each contestant, at the smallest shapes."""
    pytest.importorskip("transformers")
    pytest.importorskip("timm")
    for task, peer, opts in [
        ("segmentation", "transformers", SMALL_HEAD),
        ("detection", "torchvision", {"fpn_channels": 32, "rpn_batch_size_per_image": 32}),
    ]:
        report = run_dense_benchmark(
            task, "convnext_atto", batch_size=2, img_size=64, mode="train", compare=(peer,), repeats=1,
            warmup=0, options=opts,
        )  # fmt: skip
        assert [r["name"] for r in report["results"]] == ["ours", peer]
        assert all(r["step_ms"] > 0 for r in report["results"])
        assert report["results"][1]["max_abs_diff_vs_ours"] < 1e-3


@pytest.mark.parametrize(
    "task,peer,size", [("segmentation", "transformers", "64"), ("detection", "torchvision", "64")]
)
def test_verb_runs_each_task_against_its_peer(task: str, peer: str, size: str, capsys) -> None:
    pytest.importorskip("transformers" if peer == "transformers" else "timm")
    args = ["benchmark", "--task", task, "--model", "convnext_atto", "--img-size", size, "--batch-size", "1"]
    assert main([*args, "--compare", peer, "--repeats", "1", "--warmup", "0", "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == task and report["img_size"] == 64 and report["batch_size"] == 1
    assert report["model"] == ("upernet_" if task == "segmentation" else "maskrcnn_") + "convnext_atto"
    rows = {r["name"]: r for r in report["results"]}
    assert set(rows) == {"ours", peer}
    assert rows[peer]["max_abs_diff_vs_ours"] < 1e-3
    assert rows[peer]["ours_speedup"] > 0 and len(rows[peer]["step_ms_rounds"]) == 1


def test_table_and_mistakes(capsys) -> None:
    assert dense_model_name("segmentation", None) == "upernet_convnext_tiny"
    assert dense_model_name("detection", "fasterrcnn_convnext_atto") == "fasterrcnn_convnext_atto"
    with pytest.raises(UserError, match="segmentation model"):
        dense_model_name("detection", "upernet_convnext_atto")
    with pytest.raises(UserError, match="no model"):
        dense_model_name("segmentation", "resnet50")
    with pytest.raises(UserError, match="compares with transformers"):
        run_dense_benchmark("segmentation", "convnext_atto", img_size=64, compare=("timm",))
    with pytest.raises(UserError, match="batch-size >= 2"):
        run_dense_benchmark("segmentation", "convnext_atto", img_size=64, batch_size=1, mode="train")
    assert main(["benchmark", "--task", "detection", "--compile"]) == 2
    assert "drop --compile" in capsys.readouterr().err


def test_head_resizes_from_channels_last_give_the_plain_logits(monkeypatch) -> None:
    """The UperNet head's inner resizes read channels_last memory on CPU (models/upernet.py): the logits are
    those of the plain (N, C, H, W) resizes, and the returned logits keep the usual layout."""
    import convnext.models.upernet as upernet

    torch.manual_seed(0)
    model = build_model("upernet_convnext_atto", num_classes=5, **SMALL_HEAD).eval()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        fast = model(x)
        monkeypatch.setattr(upernet, "_resize_inside", upernet._resize)
        plain = model(x)
    assert fast.is_contiguous()
    torch.testing.assert_close(fast, plain, atol=1e-6, rtol=0)
