"""UperNet on ConvNeXt (models/upernet.py, weights/upernet.py) and mmseg's segmentation metrics
(evaluation/segmentation.py): against transformers' UperNetForSemanticSegmentation, the official mmseg
checkpoint layout, and an independent (numpy / scikit-learn) metric computation."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convnext
from convnext.models.upernet import UperNet, official_drop_path
from convnext.weights.upernet import (
    HF_UPERNET,
    MMSEG,
    upernet_from_ours,
    upernet_to_ours,
)

DEPTHS, DIMS = [1, 1, 2, 1], [8, 16, 24, 32]


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter and BatchNorm statistic random, so that a dropped or misnamed one shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            r = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(r.abs() + 0.5)
            elif t.dim() > 1 and t.shape[0] > 1:  # a conv or linear: unit gain, whatever the fan-in
                t.copy_(r / t[0].numel() ** 0.5)
            else:  # norms, biases, layer scale, GRN
                t.copy_(r * 0.2 + (1.0 if name.endswith(("weight", "layer_scale_parameter")) else 0.0))


def _hf_upernet(v2: bool = False, num_labels: int = 5):
    pytest.importorskip("transformers")
    from transformers import ConvNextConfig, ConvNextV2Config, UperNetConfig, UperNetForSemanticSegmentation

    cfg_cls = ConvNextV2Config if v2 else ConvNextConfig
    extra = {} if v2 else {"layer_scale_init_value": 1.0}
    backbone = cfg_cls(
        depths=DEPTHS, hidden_sizes=DIMS, out_features=["stage1", "stage2", "stage3", "stage4"], **extra
    )
    cfg = UperNetConfig(backbone_config=backbone, hidden_size=16, auxiliary_channels=8, num_labels=num_labels)
    torch.manual_seed(0)
    model = UperNetForSemanticSegmentation(cfg).eval()
    _randomise(model)
    return model


def _hf_logits(hf, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        logits = hf(pixel_values=x).logits
        feats = hf.backbone(x).feature_maps  # transformers' output has no auxiliary logits: as its forward
        aux = F.interpolate(hf.auxiliary_head(feats), size=x.shape[2:], mode="bilinear", align_corners=False)
    return logits, aux


@pytest.mark.parametrize("v2", [False, True])
def test_transformers_upernet_logits(v2: bool) -> None:
    hf = _hf_upernet(v2)
    arch = "upernet_convnextv2_atto" if v2 else "upernet_convnext_atto"
    ours = convnext.create_model(arch, pretrained=hf.state_dict()).eval()
    assert ours.num_classes == 5 and ours.decode_head.conv_seg.in_channels == 16
    x = torch.randn(2, 3, 96, 128)
    ref, ref_aux = _hf_logits(hf, x)
    with torch.no_grad():
        logits, aux = ours.forward_all(x)
    assert logits.shape == (2, 5, 96, 128)
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(aux, ref_aux, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours(x), ref, atol=1e-4, rtol=0)
    # and back: our weights in transformers' names load strictly into transformers' model
    back = upernet_from_ours(ours.state_dict(), HF_UPERNET)
    assert set(back) == set(hf.state_dict())
    hf2 = _hf_upernet(v2)
    hf2.load_state_dict(back, strict=True)
    torch.testing.assert_close(_hf_logits(hf2, x)[0], ref, atol=1e-5, rtol=0)


def test_hf_folder_odd_size_and_class_names(tmp_path) -> None:
    hf = _hf_upernet(num_labels=3)
    hf.config.id2label = {0: "wall", 1: "floor", 2: "sky"}
    hf.config.label2id = {v: k for k, v in hf.config.id2label.items()}
    hf.save_pretrained(tmp_path)
    ours = convnext.create_model("upernet_convnext_atto", pretrained=str(tmp_path)).eval()
    assert ours.pretrained_info.class_names == ["wall", "floor", "sky"]
    x = torch.randn(1, 3, 70, 101)  # neither square nor a multiple of 32
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(pixel_values=x).logits, atol=1e-4, rtol=0)


def _official_mmseg_keys(depths, dims, channels, aux_channels, n_cls, scales=4) -> dict[str, tuple]:
    """The official checkpoint's names and shapes, written from the official backbone file
    (semantic_segmentation/backbone/convnext.py) and mmseg's UPerHead/FCNHead/ConvModule, not from ours."""
    keys: dict[str, tuple] = {}

    def conv_module(prefix: str, cin: int, cout: int, k: int) -> None:  # ConvModule: no conv bias
        keys[f"{prefix}.conv.weight"] = (cout, cin, k, k)
        for p in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.bn.{p}"] = (cout,)
        keys[f"{prefix}.bn.num_batches_tracked"] = ()

    b = "backbone"
    keys[f"{b}.downsample_layers.0.0.weight"], keys[f"{b}.downsample_layers.0.0.bias"] = (
        (dims[0], 3, 4, 4),
        (dims[0],),
    )
    keys[f"{b}.downsample_layers.0.1.weight"] = keys[f"{b}.downsample_layers.0.1.bias"] = (dims[0],)
    for i in (1, 2, 3):
        keys[f"{b}.downsample_layers.{i}.0.weight"] = keys[f"{b}.downsample_layers.{i}.0.bias"] = (
            dims[i - 1],
        )
        keys[f"{b}.downsample_layers.{i}.1.weight"] = (dims[i], dims[i - 1], 2, 2)
        keys[f"{b}.downsample_layers.{i}.1.bias"] = (dims[i],)
    for i, (d, c) in enumerate(zip(depths, dims)):
        for j in range(d):
            s = f"{b}.stages.{i}.{j}"
            keys[f"{s}.gamma"] = keys[f"{s}.dwconv.bias"] = (c,)
            keys[f"{s}.dwconv.weight"] = (c, 1, 7, 7)
            keys[f"{s}.norm.weight"] = keys[f"{s}.norm.bias"] = (c,)
            keys[f"{s}.pwconv1.weight"], keys[f"{s}.pwconv1.bias"] = (4 * c, c), (4 * c,)
            keys[f"{s}.pwconv2.weight"], keys[f"{s}.pwconv2.bias"] = (c, 4 * c), (c,)
        keys[f"{b}.norm{i}.weight"] = keys[f"{b}.norm{i}.bias"] = (c,)
    for i in range(scales):
        conv_module(f"decode_head.psp_modules.{i}.1", dims[3], channels, 1)
    conv_module("decode_head.bottleneck", dims[3] + scales * channels, channels, 3)
    for i in range(3):
        conv_module(f"decode_head.lateral_convs.{i}", dims[i], channels, 1)
        conv_module(f"decode_head.fpn_convs.{i}", channels, channels, 3)
    conv_module("decode_head.fpn_bottleneck", 4 * channels, channels, 3)
    keys["decode_head.conv_seg.weight"], keys["decode_head.conv_seg.bias"] = (n_cls, channels, 1, 1), (n_cls,)
    conv_module("auxiliary_head.convs.0", dims[2], aux_channels, 3)
    keys["auxiliary_head.conv_seg.weight"] = (n_cls, aux_channels, 1, 1)
    keys["auxiliary_head.conv_seg.bias"] = (n_cls,)
    return keys


def test_official_mmseg_layout_round_trip(tmp_path) -> None:
    """An mmseg checkpoint (``state_dict`` + ``meta``) synthesised with the official names and shapes loads
    strictly, and the mapping both ways is the identity on it."""
    expected = _official_mmseg_keys(DEPTHS, DIMS, 16, 8, 4)
    g = torch.Generator().manual_seed(1)
    sd = {k: (torch.tensor(3) if not s else torch.rand(s, generator=g) + 0.5) for k, s in expected.items()}
    classes = ["a", "b", "c", "d"]
    path = tmp_path / "upernet_mmseg.pth"
    torch.save({"meta": {"CLASSES": classes, "mmseg_version": "0.20.2"}, "state_dict": sd}, path)
    opts = {"depths": DEPTHS, "dims": DIMS}
    model = convnext.create_model("upernet_convnext_atto", pretrained=str(path), **opts).eval()
    mine = model.state_dict()
    assert {k: tuple(v.shape) for k, v in mine.items()} == expected
    assert all(torch.equal(mine[k], sd[k]) for k in expected)
    assert model.pretrained_info.format == MMSEG and model.pretrained_info.class_names == classes
    assert upernet_to_ours(sd).keys() == sd.keys() and upernet_from_ours(mine, MMSEG).keys() == mine.keys()
    # HF's names and back are exactly the inverse
    there = upernet_from_ours(mine, HF_UPERNET)
    back = upernet_to_ours(there)
    assert back.keys() == mine.keys() and all(back[k] is mine[k] for k in mine)


def test_classification_checkpoint_initialises_backbone(caplog) -> None:
    small = {"depths": DEPTHS, "dims": DIMS}
    clf = convnext.create_model("convnext_atto", num_classes=10, **small)
    with caplog.at_level(logging.WARNING, logger="convnext"):
        seg = convnext.create_model("upernet_convnext_atto", pretrained=clf.state_dict(), channels=16)
    assert (
        seg.num_classes == 150 and sum("initialises the backbone" in r.message for r in caplog.records) == 1
    )
    want = {k: v for k, v in clf.state_dict().items() if not k.startswith(("head.", "norm."))}
    got = seg.backbone.state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items())
    # a timm state dict too (what prepare reads today)
    timm = pytest.importorskip("timm")
    tm = timm.create_model("convnext_atto", pretrained=False, **small)
    seg2 = convnext.create_model("upernet_convnext_atto", pretrained=tm.state_dict(), channels=16)
    torch.testing.assert_close(
        seg2.backbone.stages[0][0].dwconv.weight, tm.stages[0].blocks[0].conv_dw.weight
    )


def test_fine_tune_classes_and_errors() -> None:
    hf = _hf_upernet()
    ours = convnext.create_model("upernet_convnext_atto", pretrained=hf.state_dict(), num_classes=7)
    assert ours.decode_head.conv_seg.out_channels == 7 and ours.auxiliary_head.conv_seg.out_channels == 7
    no_aux = convnext.create_model("upernet_convnext_atto", pretrained=hf.state_dict(), aux=False)
    assert no_aux.auxiliary_head is None
    with pytest.raises(convnext.errors.UserError, match="does not fit"):
        convnext.create_model("upernet_convnext_atto", pretrained=hf.state_dict(), channels=32)
    with pytest.raises(convnext.errors.UserError, match="UperNet segmentation"):
        convnext.create_model("convnext_atto", pretrained=hf.state_dict())


def test_model_names_and_official_settings() -> None:
    names = [n for n in convnext.list_models() if "isotropic" not in n]
    for n in names:
        assert convnext.models.get_variant(f"upernet_{n}").family in ("v1", "v2")
    with pytest.raises(ValueError):
        convnext.models.get_variant("upernet_convnext_isotropic_small")
    assert [official_drop_path(f"convnext_{s}") for s in ("tiny", "small", "base")] == [0.4, 0.3, 0.4]
    m = convnext.create_model(
        "upernet_convnext_atto", channels=16, aux_channels=8, pool_scales=(1, 2), depths=DEPTHS, dims=DIMS
    )
    assert isinstance(m, UperNet) and m.num_classes == 150 and len(m.decode_head.psp_modules) == 2
    assert m.backbone.stages[0][0].gamma[0].item() == 1.0  # the official configs' layer_scale_init_value
    x = torch.randn(1, 3, 45, 77)
    m.eval()
    with torch.no_grad():
        assert m(x).shape == (1, 150, 45, 77)
    m.train()
    logits, aux = m.forward_all(torch.randn(2, 3, 64, 96))
    (logits.mean() + 0.4 * aux.mean()).backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_names_do_not_leak_into_list_models() -> None:
    assert not any(re.match("upernet_", n) for n in convnext.list_models())


# ------------------------------------------------------------------------------------ segmentation metrics


def _mmseg_intersect_and_union(pred, label, num_classes, ignore_index, reduce_zero):
    """mmseg 0.x ``intersect_and_union``, transcribed: torch.histc on floats, its reduce_zero_label steps."""
    label = label.clone()
    if reduce_zero:
        label[label == 0] = 255
        label = label - 1
        label[label == 254] = 255
    mask = label != ignore_index
    pred, label = pred[mask], label[mask]
    inter = pred[pred == label]
    args = {"bins": num_classes, "min": 0, "max": num_classes - 1}
    a_i, a_p, a_l = (torch.histc(t.float(), **args) for t in (inter, pred, label))
    return a_i, a_p + a_l - a_i, a_p, a_l


def _random_maps(seed: int, n: int, num_classes: int, reduce_zero: bool):
    """Label maps with ignored pixels, a class absent from everything and one only predicted."""
    g = torch.Generator().manual_seed(seed)
    top = num_classes + 1 if reduce_zero else num_classes
    out = []
    for i in range(n):
        h, w = 13 + i, 17 + 2 * i
        label = torch.randint(0, top, (h, w), generator=g)
        label[torch.rand(h, w, generator=g) < 0.15] = 255
        pred = torch.where(
            torch.rand(h, w, generator=g) < 0.6, label, torch.randint(0, num_classes, (h, w), generator=g)
        )
        pred = pred.clamp_max(num_classes - 1)
        absent = num_classes - 1  # never in the ground truth; predicted only in the first image
        label[label == (absent + 1 if reduce_zero else absent)] = 255
        pred[pred == absent] = 0
        pred[pred == absent - 1] = 0  # absent - 1: neither predicted nor (after the next line) labelled
        label[label == (absent if reduce_zero else absent - 1)] = 255
        if i == 0:
            pred[0, 0] = absent
        out.append((pred, label))
    return out


@pytest.mark.parametrize("reduce_zero", [False, True])
def test_segmentation_metrics_are_mmsegs(reduce_zero: bool) -> None:
    from sklearn.metrics import confusion_matrix, jaccard_score, recall_score

    from convnext.evaluation.segmentation import SegmentationMeter, intersect_and_union, segmentation_metrics

    c = 6
    maps = _random_maps(0, 4, c, reduce_zero)
    meter = SegmentationMeter(c, reduce_zero=reduce_zero)
    ref = [torch.zeros(c, dtype=torch.float64) for _ in range(4)]
    for pred, label in maps:
        meter.update(pred, label)
        for total, area in zip(ref, _mmseg_intersect_and_union(pred, label, c, 255, reduce_zero)):
            total += area.double()
    assert torch.equal(meter.hist.double(), torch.stack(ref))
    got = meter.compute()
    iou, acc = (ref[0] / ref[1]).numpy(), (ref[0] / ref[3]).numpy()
    assert np.isnan(iou[c - 2]) and iou[c - 1] == 0 and np.isnan(acc[c - 1])  # absent; only predicted
    assert got["mIoU"] == pytest.approx(np.nanmean(iou), abs=1e-12)
    assert got["mAcc"] == pytest.approx(np.nanmean(acc), abs=1e-12)
    assert got["aAcc"] == pytest.approx(float(ref[0].sum() / ref[3].sum()), abs=1e-12)
    # scikit-learn over all kept pixels at once: the same figures
    ys, ps = [], []
    for pred, label in maps:
        lab = label - 1 if reduce_zero else label
        lab = torch.where(
            (label == 0) if reduce_zero else torch.zeros_like(label, dtype=torch.bool), 255, lab
        )
        keep = (lab != 255) & (label != 255)
        ys.append(lab[keep].numpy())
        ps.append(pred[keep].numpy())
    y, p = np.concatenate(ys), np.concatenate(ps)
    present = np.union1d(y, p)  # sklearn averages over the labels it is given: those seen anywhere
    assert got["mIoU"] == pytest.approx(jaccard_score(y, p, labels=present, average="macro"), abs=1e-12)
    assert got["mAcc"] == pytest.approx(recall_score(y, p, labels=np.unique(y), average="macro"), abs=1e-12)
    sk_iou = jaccard_score(y, p, labels=list(range(c)), average=None, zero_division=0)
    np.testing.assert_allclose(np.nan_to_num(got["IoU"]), sk_iou, atol=1e-12)
    cm = confusion_matrix(y, p, labels=list(range(c)))
    assert got["aAcc"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-12)
    # logits are arg-maxed; halves on two "ranks" sum to the whole
    logits = F.one_hot(maps[0][0], c).permute(2, 0, 1)[None].float()
    one = SegmentationMeter(c, reduce_zero=reduce_zero)
    one.update(logits, maps[0][1][None])
    assert torch.equal(one.hist, intersect_and_union(maps[0][0], maps[0][1], c, reduce_zero=reduce_zero))
    a, b = (SegmentationMeter(c, reduce_zero=reduce_zero) for _ in range(2))
    for i, (pred, label) in enumerate(maps):
        (a if i % 2 else b).update(pred, label)
    assert torch.equal(a.hist + b.hist, meter.hist)
    assert segmentation_metrics(a.hist + b.hist)["mIoU"] == got["mIoU"]


def test_segmentation_counts_all_reduce(tmp_path) -> None:
    """The meter's all_reduce goes through torch.distributed (gloo, one process: the sum is itself)."""
    import torch.distributed as dist

    from convnext.evaluation.segmentation import SegmentationMeter

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        m = SegmentationMeter(3)
        m.update(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 2, 255]]))
        before = m.hist.clone()
        assert torch.equal(m.all_reduce(), before) and m.hist.dtype == torch.long
    finally:
        dist.destroy_process_group()


def test_layer_ids_are_the_official_stage_wise() -> None:
    """semantic_segmentation/mmcv_custom/layer_decay_optimizer_constructor.py, stage_wise, num_layers=6."""

    def official(var_name: str, num_max_layer: int = 6 + 2) -> int:  # get_num_layer_stage_wise, transcribed
        if var_name.startswith("backbone.downsample_layers"):
            return 0
        if var_name.startswith("backbone.stages"):
            return int(var_name.split(".")[2]) + 1
        return num_max_layer - 1

    m = convnext.create_model("upernet_convnext_atto", channels=16, aux_channels=8, depths=DEPTHS, dims=DIMS)
    layer_of, head = m.layer_ids()
    for name, _ in m.named_parameters():
        assert layer_of(name) == official(name)
        assert 0.9 ** (head - layer_of(name)) == 0.9 ** (8 - official(name) - 1)  # the official lr_scale
