"""OpenVINO IR (.xml + .bin) on the CPU: fp32, bf16 (fp16-stored weights, bf16 hint) and int8 (NNCF).

The IR is converted from torch.export of the model's channels-first form (:mod:`.openvino_form`: same
function, the ops OpenVINO runs fastest), never from ONNX.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..messages import note
from ..models.cpu import cpu_features_line, cpu_has_int8_dot, cpu_has_native_bf16
from . import require
from .base import (
    INPUT_NAME,
    META_KEY,
    OUTPUT_NAME,
    ExportMeta,
    Runner,
    WriteContext,
    Written,
    batched,
    detection_examples,
    detection_notes,
    example,
    foreign_meta,
    from_meta,
    numpy_input,
    threads_or_default,
    top1_agreement,
    torch_export,
    verify,
    verify_detections,
)
from .openvino_form import openvino_form

# OpenVINO precision hints <-> our names.
OV_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
OV_RUN_PRECISION = {"fp32": "fp32", "bf16": "bf16", "int8": "bf16"}  # the hint stored with an IR
INT8_FLOAT_PARTS = ("dwconv", "stem", "head")  # what --int8-float may keep out of int8
# The depthwise convs stay in float by default: in int8 their input needs its own quantize pass (and two
# layout reorders) on the residual stream, and the int8 depthwise kernel is slower than the bf16 one
# (BENCHMARKS.md, "Export"); they are 2% of the FLOPs.
DEFAULT_INT8_FLOAT = ("dwconv",)


class OpenVINORunner(Runner):
    """An OpenVINO IR (.xml + .bin) on the CPU, compiled with an explicit precision hint.

    OpenVINO's CPU plugin runs fp32 models in bf16 by default wherever the CPU has bf16 instructions (AMX,
    and AVX512-BF16 as on this project's test host), which moves logits by ~1e-2 relative. We set the hint
    the file was exported for (``inference_precision`` in its metadata: fp32 unless bf16 was asked for), so
    an fp32 export runs in fp32; ``precision`` reports what the compiled model really uses.
    """

    def __init__(
        self,
        path: str,
        *,
        device: str = "CPU",
        threads: int | None = None,
        hint: str | None = None,
        core: Any = None,
        **_: Any,
    ) -> None:
        ov = require("openvino", f"running {path}")
        if not Path(path).with_suffix(".bin").is_file():
            raise UserError(f"{path} needs its weights file {Path(path).with_suffix('.bin')} next to it")
        self.core = core or ov.Core()
        try:
            model = self.core.read_model(path)
        except RuntimeError as e:
            raise UserError(f"OpenVINO cannot read {path} ({str(e).splitlines()[0]})") from None
        meta = None
        if model.has_rt_info([META_KEY]):
            meta = ExportMeta.from_json(model.get_rt_info([META_KEY]).astype(str), path)
        else:
            shape = model.outputs[0].get_partial_shape()
            n = shape[-1].get_length() if shape[-1].is_static else 0
            meta = foreign_meta(path, "openvino", n)
        from_meta(self, meta, "openvino", path)
        dim = model.inputs[0].get_partial_shape()[-1]
        self.fixed_size = dim.get_length() if dim.is_static else None
        hint = hint or meta.inference_precision or "fp32"
        if hint == "bf16" and not cpu_has_native_bf16():  # what OpenVINO does itself, also under an ISA cap
            hint = "fp32"
        config = {
            "INFERENCE_PRECISION_HINT": OV_HINTS.get(hint, hint),
            "INFERENCE_NUM_THREADS": threads_or_default(threads),
        }
        # a torch device name (cpu, auto, cuda, ...) runs on OpenVINO's CPU plugin, as it always has
        torch_name = str(device).lower() in ("cpu", "auto", "mps") or str(device).lower().startswith("cuda")
        ov_device = "CPU" if torch_name else str(device).upper()
        self.compiled = self.core.compile_model(model, ov_device, config)
        self.request = self.compiled.create_infer_request()
        ran = _ov_type_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        quantized = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
        self.precision = f"int8 (other layers {ran})" if quantized else ran
        self.backend = "openvino-int8" if quantized else "openvino"
        if quantized and not cpu_has_int8_dot():
            note(
                f"this CPU has no int8 dot-product instructions (VNNI or AMX): {path} may gain little over "
                "an fp32 export here; compare with convnext benchmark --backend torch,openvino,openvino-int8"
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.request.infer({0: numpy_input(x)}, share_inputs=True)
        return torch.from_numpy(next(iter(out.values())).copy()).to(x.device)

    def forward_all(self, x: Tensor) -> list[Tensor]:
        out = self.request.infer({0: numpy_input(x)}, share_inputs=True)
        return [torch.from_numpy(out[o].copy()).to(x.device) for o in self.compiled.outputs]


def read_meta(path: str) -> str | None:
    """The IR's convnext metadata (JSON), read without compiling it."""
    ov = require("openvino", f"reading {path}")
    model = ov.Core().read_model(path)
    return model.get_rt_info([META_KEY]).astype(str) if model.has_rt_info([META_KEY]) else None


def _ov_type_name(t: Any) -> str:
    s = str(t).lower()
    return "bf16" if "bf16" in s or "bfloat16" in s else "fp16" if "f16" in s or "float16" in s else "fp32"


def to_openvino(model: nn.Module, meta: ExportMeta, size: int) -> Any:
    """An in-memory OpenVINO model converted from torch.export (no ONNX needed), static H x W, of the
    model's channels-first form (:mod:`.openvino_form`: same function, the ops OpenVINO runs fastest)."""
    import openvino as ov

    program = torch_export(openvino_form(model), size)
    om = ov.convert_model(program, input=[(-1, 3, size, size)])
    om.inputs[0].get_tensor().set_names({INPUT_NAME})
    om.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    om.set_rt_info(meta.to_json(), [META_KEY])
    return om


def float_scope(om: Any, parts: tuple[str, ...]) -> Any:
    """The NNCF IgnoredScope that keeps ``parts`` in float: the depthwise convs (GroupConvolution), the stem
    (the first convolution) and the head (the last MatMul)."""
    import nncf

    ops = [op for op in om.get_ordered_ops() if op.get_type_name() in ("Convolution", "MatMul")]
    names = []
    if "stem" in parts and ops:
        names.append(ops[0].get_friendly_name())
    if "head" in parts and ops:
        names.append(ops[-1].get_friendly_name())
    types = ["GroupConvolution"] if "dwconv" in parts else []
    return nncf.IgnoredScope(names=names, types=types)


def quantize_int8(
    om: Any, calib: torch.Tensor, say: Callable[[str], None], keep_float: tuple[str, ...] = DEFAULT_INT8_FLOAT
) -> Any:
    """NNCF post-training quantization (int8 weights and activations) calibrated on ``calib``.

    ``ModelType.TRANSFORMER`` is NNCF's scheme for LayerNorm networks: the LayerNorm / GELU / residual adds
    stay in float (on the channels-first graph SmoothQuant only touches the head, its one MatMul). On the
    quickstart digits model it loses nothing (98.61%, 100% agreement), where NNCF's CNN scheme, a little
    faster, lost 0.28 points (BENCHMARKS.md, "Export"); ``keep_float`` (dwconv, stem, head) keeps more in
    float for a model that needs it (slower). The depthwise convs are float by default
    (``DEFAULT_INT8_FLOAT``).
    """
    import contextlib
    import logging
    import sys

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime" on import
    import nncf

    logging.getLogger("nncf").setLevel(logging.ERROR)
    items = [calib[i : i + 1].numpy() for i in range(len(calib))]
    say(f"quantizing to int8 with NNCF on {len(items)} calibration images")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: not on our stdout
            return nncf.quantize(
                om,
                nncf.Dataset(items),
                subset_size=len(items),
                model_type=nncf.ModelType.TRANSFORMER,
                ignored_scope=float_scope(om, keep_float) if keep_float else None,
            )
    except Exception as e:
        raise UserError(f"NNCF quantization failed ({str(e).strip().splitlines()[0]})") from None


def write_detection(model: nn.Module, meta: ExportMeta, target: Path, ctx: WriteContext) -> Written:
    """A torchvision detector: converted from its ONNX export (torch.export cannot capture its NMS and RoI
    selection; :func:`convnext.runtimes.onnx.write_detection_onnx`), any H x W, fp32, verified."""
    import openvino as ov

    from .onnx import write_detection_onnx

    if meta.precision != "fp32":
        raise UserError(
            f"--precision {meta.precision} is for classifiers and UperNet; a detector exports in fp32 "
            "(--format openvino or onnx)"
        )
    size = int(meta.data.img_size)
    onnx_path = target.with_name("detector.onnx")
    ctx.say(f"exporting {meta.arch} to ONNX (TorchScript exporter), then converting it to OpenVINO")
    write_detection_onnx(model, onnx_path, meta, ctx.opset)
    om = ov.convert_model(str(onnx_path))
    onnx_path.unlink()
    om.inputs[0].get_tensor().set_names({INPUT_NAME})
    om.set_rt_info(meta.to_json(), [META_KEY])
    ov.save_model(om, str(target), compress_to_fp16=False)
    runner = OpenVINORunner(str(target), hint="fp32")
    ctx.say("verifying in OpenVINO at fp32")
    diff, compared = verify_detections(
        runner, model, detection_examples(size), "the OpenVINO model run at fp32"
    )
    return Written(runner.precision, diff, None, detection_notes(compared))


def write(model: nn.Module, meta: ExportMeta, target: Path, ctx: WriteContext) -> Written:
    """fp32: the converted graph, verified. bf16 and int8: the fp32 graph is verified first whatever the
    precision (conversion errors are not rounding), then the file is written and its top-1 agreement with
    fp32 measured. ``ctx.cache`` keeps the conversion (the slow part) between fp32, bf16 and int8."""
    if meta.extra.get("task") == "detection":
        return write_detection(model, meta, target, ctx)
    size, precision, images, say, notes = int(meta.data.img_size), meta.precision, ctx.images, ctx.say, []
    if precision == "int8" and images is None:
        raise UserError("int8 needs calibration images")
    import openvino as ov

    cache = ctx.cache
    if "model" not in cache:
        say(f"converting {meta.arch} to OpenVINO (torch.export, dynamic batch, {size} px)")
        cache["model"] = to_openvino(model, meta, size)
    om = cache["model"]  # save_model and nncf.quantize leave it as it is
    om.set_rt_info(meta.to_json(), [META_KEY])
    # The fp32 graph is checked first whatever the precision: conversion errors are not rounding.
    fp32_path = target.with_name("fp32-" + target.name)
    ov.save_model(om, str(fp32_path), compress_to_fp16=False)
    core = ov.Core()
    ref = OpenVINORunner(str(fp32_path), hint="fp32", core=core)
    say("verifying in OpenVINO at fp32")
    diff = verify(ref, model, size, images, "the OpenVINO model run at fp32")
    if precision == "fp32":
        os.replace(fp32_path, target)
        os.replace(fp32_path.with_suffix(".bin"), target.with_suffix(".bin"))
        return Written(ref.precision, diff, None, notes)
    if precision == "bf16":
        # Weights stored as fp16 (half the file); the bf16 hint makes the CPU plugin run in bf16.
        ov.save_model(om, str(target), compress_to_fp16=True)
    else:
        q = quantize_int8(om, images, say, tuple(meta.extra.get("int8_float", DEFAULT_INT8_FLOAT)))
        ov.save_model(q, str(target), compress_to_fp16=False)
        if not cpu_has_int8_dot():
            notes.append(
                f"this CPU has no int8 dot-product instructions ({cpu_features_line()}): int8 may gain "
                "little over fp32 here; compare: convnext benchmark --backend torch,openvino,openvino-int8"
            )
    for p in (fp32_path, fp32_path.with_suffix(".bin")):
        p.unlink()
    runner = OpenVINORunner(str(target), core=core)
    check = images if images is not None else example(size, 8)
    agreement = top1_agreement(batched(runner, check), batched(ref, check))
    del ref
    return Written(runner.precision, diff, agreement, notes)


RUNNER = OpenVINORunner
