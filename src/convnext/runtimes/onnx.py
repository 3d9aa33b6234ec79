"""ONNX files (.onnx) in onnxruntime: written by ``torch.onnx`` (dynamo, opset >= 18), the plain model."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UserError
from . import require
from .base import (
    DETECTION_OUTPUTS,
    INPUT_NAME,
    META_KEY,
    OUTPUT_NAME,
    TRACE_BATCH,
    ExportMeta,
    Runner,
    WriteContext,
    Written,
    count_modules,
    detection_examples,
    detection_notes,
    dynamic_batch,
    foreign_meta,
    from_meta,
    numpy_input,
    threads_or_default,
    verify,
    verify_detections,
)


class OnnxRunner(Runner):
    """An .onnx file in onnxruntime (CPU; CUDA when asked for and onnxruntime-gpu is installed)."""

    def __init__(self, path: str, *, device: str = "cpu", threads: int | None = None, **_: Any) -> None:
        ort = require("onnxruntime", f"running {path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads_or_default(threads)
        opts.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(path, opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for a broken file
            raise UserError(f"onnxruntime cannot load {path} ({str(e).splitlines()[0]})") from None
        outputs = self.session.get_outputs()
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        raw = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        n = outputs[0].shape[-1] if isinstance(outputs[0].shape[-1], int) else 0
        meta = ExportMeta.from_json(raw, path) if raw else foreign_meta(path, "onnx", n)
        from_meta(self, meta, "onnxruntime", path)
        self.fixed_size = inp.shape[-1] if isinstance(inp.shape[-1], int) else None
        self.providers = self.session.get_providers()
        self.precision = meta.precision + ("" if providers[0] == "CPUExecutionProvider" else " (CUDA)")

    def forward(self, x: Tensor) -> Tensor:
        out = self.session.run(None, {self.input_name: numpy_input(x)})[0]
        return torch.from_numpy(out).to(x.device)

    def forward_all(self, x: Tensor) -> list[Tensor]:
        return [
            torch.from_numpy(o).to(x.device)
            for o in self.session.run(None, {self.input_name: numpy_input(x)})
        ]

    def where(self) -> str:
        """onnxruntime's first execution provider."""
        return "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"


def read_meta(path: str) -> str | None:
    """The file's convnext metadata (JSON), without loading its weights."""
    import onnx

    proto = onnx.load(path, load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}.get(META_KEY)


def write_onnx(model: nn.Module, path: Path, meta: ExportMeta, size: int, opset: int) -> None:
    x = torch.randn(TRACE_BATCH, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                model,
                (x,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic_batch(),
                verbose=False,
            )
        except Exception as e:
            raise UserError(f"ONNX export failed ({str(e).strip().splitlines()[0]})") from None
    program.model.metadata_props[META_KEY] = meta.to_json()
    program.save(str(path))


def check_onnx_graph(
    path: Path, model: nn.Module, opset: int, only: tuple[str, ...] | None = None
) -> dict[str, int]:
    """The written graph's opset and op counts against the model's modules (a dropped block fails);
    ``only``: those ops."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    version = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if version < 18:
        raise UserError(f"{path} has opset {version}; the exporter must write opset >= 18")
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    for op, want in count_modules(model).items():
        if only is not None and op not in only:
            continue
        if counts.get(op, 0) != want:
            raise UserError(
                f"the ONNX graph has {counts.get(op, 0)} {op} nodes but the model has {want}; "
                "the file was deleted"
            )
    return counts


def is_detection(meta: ExportMeta) -> bool:
    return meta.extra.get("task") == "detection"


def write_detection_onnx(model: nn.Module, path: Path, meta: ExportMeta, opset: int) -> None:
    """A torchvision detector (its resize and normalisation, RPN, RoI heads and mask pasting included) on
    one float image in [0, 1] of any H x W, as torchvision documents its ONNX export: the TorchScript
    exporter, which captures the data-dependent control flow of NMS and RoI selection that torch.export
    (``dynamo=True``) refuses."""
    import onnx

    outputs = DETECTION_OUTPUTS[: 4 if getattr(model.roi_heads, "has_mask", lambda: False)() else 3]
    x = detection_examples(int(meta.data.img_size))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                ([x],),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(outputs),
                dynamic_axes={INPUT_NAME: {1: "height", 2: "width"}},
            )
        except Exception as e:
            raise UserError(f"ONNX export failed ({str(e).strip().splitlines()[0]})") from None
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, meta.to_json()
    onnx.save(proto, str(path))


def write(model: nn.Module, meta: ExportMeta, target: Path, ctx: WriteContext) -> Written:
    size, opset = int(meta.data.img_size), ctx.opset
    if is_detection(meta):
        ctx.say(
            f"exporting {meta.arch} to ONNX (opset {opset}, one image of any H x W, TorchScript exporter)"
        )
        meta.extra["opset"] = opset
        write_detection_onnx(model, target, meta, opset)
        check_onnx_graph(target, model, opset, only=("LayerNormalization",))  # the RPN head runs per level
        runner = OnnxRunner(str(target))
        ctx.say("verifying in onnxruntime")
        diff, compared = verify_detections(
            runner, model, detection_examples(size), "the ONNX file run in onnxruntime"
        )
        return Written(runner.precision, diff, None, detection_notes(compared))
    ctx.say(f"exporting {meta.arch} to ONNX (opset {opset}, dynamic batch, {size} px)")
    meta.extra["opset"] = opset
    write_onnx(model, target, meta, size, opset)
    # UperNet: a backbone's stage norm and the next downsampling norm read the same map, and the exporter
    # merges the two LayerNormalization nodes while their weights are equal (freshly initialised); its
    # parity check, with layer scale 1, is what catches a dropped block there
    only = ("Conv",) if meta.extra.get("task") == "segmentation" else None
    check_onnx_graph(target, model, opset, only=only)
    runner = OnnxRunner(str(target))
    ctx.say("verifying in onnxruntime")
    diff = verify(runner, model, size, ctx.images, "the ONNX file run in onnxruntime")
    return Written(runner.precision, diff, None, [])


RUNNER = OnnxRunner
