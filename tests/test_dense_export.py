"""`convnext export` of the dense models: UperNet to ONNX / OpenVINO / pt2 at a fixed square size, with the
parity check on per-pixel logits (layer scale 1 and non-trivial norms: a dropped block shows); Mask R-CNN to
ONNX (torchvision's documented TorchScript export) and OpenVINO, one image of any size, every detection
equal to PyTorch's on a real photo; what is refused, in one sentence.

The detector's exports, OpenVINO, int8 and pt2 are in ``-m slow``: each export traces the model again
(20-50 s each on the shared 2-core host); CI exports UperNet to ONNX and checks the refusals.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from test_dense_predict import DET, SEG, det_checkpoint, seg_checkpoint, small_photo

from convnext.errors import UserError
from convnext.export import export_model

pytest.importorskip("onnxruntime")


def test_upernet_onnx_parity_on_a_photo_and_a_dropped_block_is_caught(tmp_path: Path) -> None:
    from convnext.data.images import load_image
    from convnext.hub import create_model
    from convnext.inference.dense import load_dense, predict_dense
    from convnext.runtimes.base import open_exported, verify

    weights = seg_checkpoint(tmp_path / "upernet.pth", num_classes=6)
    res = export_model(str(weights), out=tmp_path / "upernet.onnx", model_name=SEG, img_size=64)
    assert res.max_rel_diff is not None and res.max_rel_diff <= 1e-5
    assert res.meta.extra["task"] == "segmentation" and res.meta.num_classes == 6
    runner = open_exported(str(res.path))
    assert runner.fixed_size == 64  # dynamic H/W exports, but onnxruntime fails at other sizes: fixed
    model = create_model(SEG, pretrained=str(weights)).eval()
    picture = small_photo(tmp_path / "tench.png", (64, 64))
    img = load_image(str(picture))
    with torch.no_grad():
        x = _seg_input(img)
        ref = model(x)
    out = runner.forward(x)
    assert out.shape == ref.shape == (1, 6, 64, 64)
    assert float((out - ref).abs().max() / ref.abs().max()) <= 1e-5
    # predict on the exported file gives PyTorch's label map
    (a,) = predict_dense(load_dense(str(res.path)), [str(picture)])
    (b,) = predict_dense(load_dense(str(weights), SEG, img_size=64), [str(picture)])
    assert a.label_map is not None and torch.equal(a.label_map, b.label_map)
    # serve runs the exported file as predict does
    pytest.importorskip("fastapi")
    import base64
    import io

    import httpx
    import numpy as np
    from PIL import Image
    from test_serve import wait_ready

    from convnext.serve.app import ServeSettings, create_app
    from convnext.serve.runners import load_runner
    from convnext.serve.server import ThreadedServer

    with ThreadedServer(create_app(lambda: load_runner(str(res.path)), ServeSettings())) as srv:
        wait_ready(srv.url)
        assert httpx.get(srv.url + "/v1/model").json()["backend"] == "onnxruntime"
        answer = httpx.post(srv.url + "/v1/predict", files={"file": picture.read_bytes()}, timeout=60).json()
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["label_map"])))).astype("int64")
    assert torch.equal(torch.from_numpy(served), a.label_map)
    # the check that deletes a wrong file sees a block gone (layer scale 1, non-trivial norms)
    broken = copy.deepcopy(model)
    broken.backbone.stages[2][0] = torch.nn.Identity()
    with pytest.raises(UserError, match="differs from PyTorch"):
        verify(runner, broken, 64, None, "the ONNX file")


def _seg_input(img: torch.Tensor) -> torch.Tensor:
    from convnext.inference.dense import DenseModel, seg_input

    return seg_input(img, DenseModel("segmentation", SEG, 6, [], [], "", img_size=64, fixed_size=64))


@pytest.mark.slow  # ~40 s on the loaded 2-core host: the export and its check run the detector 5 times
def test_maskrcnn_onnx_detections_equal_pytorch_on_a_photo(tmp_path: Path) -> None:
    from convnext.data.images import load_image
    from convnext.inference.dense import load_dense, predict_dense

    weights = det_checkpoint(tmp_path / "maskrcnn.pth")
    res = export_model(str(weights), out=tmp_path / "maskrcnn.onnx", model_name=DET, img_size=64)
    assert res.meta.extra["task"] == "detection" and res.max_rel_diff <= 1e-4
    assert not res.notes  # detections were compared, not only counted
    picture = small_photo(tmp_path / "tench.png", (150, 100))  # not the traced size: H and W are dynamic
    exported = load_dense(str(res.path))
    assert exported.names == ["__background__", "circle", "square"]
    (a,) = predict_dense(exported, [str(picture)], score_threshold=0.3)
    (b,) = predict_dense(load_dense(str(weights), DET, img_size=64), [str(picture)], score_threshold=0.3)
    assert len(a.detections) == len(b.detections) > 0
    side = max(load_image(str(picture)).shape[1:])
    for x, y in zip(a.detections, b.detections):
        assert x.label == y.label and abs(x.score - y.score) < 1e-4
        assert max(abs(p - q) for p, q in zip(x.box, y.box)) <= 1e-3 * side + 0.01  # rounded to 0.01 px
        assert (x.mask ^ y.mask).float().mean() < 1e-3


@pytest.mark.parametrize(
    ("suffix", "precision", "why"),
    [(".pt2", "fp32", "torch.export cannot"), (".xml", "int8", "no int8/bf16 path")],
)
def test_detector_formats_that_do_not_work_are_one_sentence(
    tmp_path: Path, suffix: str, precision: str, why: str
) -> None:
    weights = det_checkpoint(tmp_path / "maskrcnn.pth")
    with pytest.raises(UserError, match=why):
        export_model(str(weights), out=tmp_path / f"m{suffix}", model_name=DET, precision=precision)
    assert not list(tmp_path.glob("m.*"))


@pytest.mark.slow
def test_upernet_openvino_fp32_bf16_int8_and_pt2(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    weights = seg_checkpoint(tmp_path / "upernet.pth", num_classes=6)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, size in enumerate([(64, 64), (80, 60), (100, 90), (70, 70)]):
        small_photo(calib / f"{i}.png", size)
    for out, precision in (("u.xml", "fp32"), ("u16.xml", "bf16"), ("u8.xml", "int8"), ("u.pt2", "fp32")):
        res = export_model(
            str(weights), out=tmp_path / out, model_name=SEG, img_size=64, precision=precision,
            calibration=str(calib) if precision == "int8" else None,
        )  # fmt: skip
        assert res.max_rel_diff <= 1e-5, out
        if precision == "bf16":
            assert res.agreement is not None and res.agreement > 0.9  # pixels whose class is fp32's
        if precision == "int8":  # a tiny random model on 4 calibration images: no accuracy to keep
            assert res.agreement is not None and 0 <= res.agreement <= 1


@pytest.mark.slow
def test_maskrcnn_openvino_detections_equal_pytorch(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    from convnext.inference.dense import load_dense, predict_dense

    weights = det_checkpoint(tmp_path / "maskrcnn.pth")
    res = export_model(str(weights), out=tmp_path / "maskrcnn.xml", model_name=DET, img_size=64)
    picture = small_photo(tmp_path / "tench.png", (150, 100))
    (a,) = predict_dense(load_dense(str(res.path)), [str(picture)], score_threshold=0.3)
    (b,) = predict_dense(load_dense(str(weights), DET, img_size=64), [str(picture)], score_threshold=0.3)
    assert [(d.label, round(d.score, 3)) for d in a.detections] == [
        (d.label, round(d.score, 3)) for d in b.detections
    ]
