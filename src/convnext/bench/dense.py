"""``convnext benchmark --task segmentation | detection``: our dense models against the field's, fairly.

Segmentation: our ``upernet_<backbone>`` against transformers' ``UperNetForSemanticSegmentation`` with a
ConvNeXt (V2) backbone, built from a transformers config of the same shape and holding our weights (through
``weights/upernet.py``'s mapping), its logits checked equal to ours before anything is timed. Detection: our
``maskrcnn_<backbone>`` / ``fasterrcnn_<backbone>`` against torchvision's ``MaskRCNN`` / ``FasterRCNN``
over timm's ConvNeXt (``features_only``), the official per-stage LayerNorms and torchvision's
``FeaturePyramidNetwork``, our weights copied in; its FPN outputs are checked equal to ours (the heads are
torchvision's on both sides). Inference, or a training step (forward, the task's loss, backward, AdamW),
timed interleaved in one process as ``bench/models.py`` does, medians and ratios of medians.

Defaults, sized for what is being asked: the paper's ADE20K crop (512 px, 2 images per GPU as the official
160k schedule's 8 x 2) and a short side of 800 px for COCO on a GPU; on a CPU a 256 px crop and 320 px images
(each round then takes seconds on a few cores, not minutes: UperNet's 512-channel head at stride 4 is most
of the work).
"""

from __future__ import annotations

import copy
import inspect
import re
import statistics
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..device import amp_dtype, autocast, resolve_device
from ..engine.allocator import allocator_tuned, tune_cpu_allocator
from ..errors import UserError
from ..models import build_model, fuse_for_inference, get_variant, set_chunked_mlp
from ..models.profile import count_params
from .models import adamw
from .timing import device_name, measure_memory, ratio_of_medians, ratio_spread, time_call

TASKS = ("segmentation", "detection")
DENSE_PEERS = {"segmentation": ("transformers",), "detection": ("torchvision",)}
# Our own model run another way, as a contestant (same weights): --compare plain / fused.
OWN_VARIANTS = {"plain": "ours-plain", "fused": "ours-fused"}
_PREFIXES = {"segmentation": ("upernet_",), "detection": ("maskrcnn_", "fasterrcnn_")}
# task -> (model, CPU size, GPU size, batch): see the module docstring for why.
DEFAULTS = {
    "segmentation": ("upernet_convnext_tiny", 256, 512, 2),
    "detection": ("maskrcnn_convnext_tiny", 320, 800, 2),
}
IGNORE_INDEX = 255  # mmseg's and transformers' ignore label
AUX_WEIGHT = 0.4  # the auxiliary head's loss weight (official configs, transformers' default)


def dense_model_name(task: str, model: str | None) -> str:
    """The model ``--model`` names for ``task``: a dense name as it is, a backbone name under the task's
    default head (``convnext_atto`` -> ``upernet_convnext_atto``), None the task's default."""
    if task not in TASKS:
        raise UserError(f"--task must be one of classification, {', '.join(TASKS)}, not {task!r}")
    if model is None:
        return DEFAULTS[task][0]
    other = next(t for t in TASKS if t != task)
    if model.startswith(_PREFIXES[other]):
        raise UserError(f"--model {model} is a {other} model; use --task {other} or a {task} model")
    name = model if model.startswith(_PREFIXES[task]) else _PREFIXES[task][0] + model
    try:
        get_variant(name)
    except ValueError:
        raise UserError(
            f"--task {task} has no model {model!r}; name a ConvNeXt (V2) backbone, e.g. "
            f"{_PREFIXES[task][0]}convnext_tiny"
        ) from None
    return name


def _check_peers(task: str, compare: tuple[str, ...]) -> tuple[str, ...]:
    peers = tuple(p for p in compare if p)
    for p in peers:
        if p not in DENSE_PEERS[task] + tuple(OWN_VARIANTS):
            known = ", ".join(DENSE_PEERS[task] + tuple(OWN_VARIANTS))
            raise UserError(f"--task {task} compares with {known}, not {p!r}")
    return peers


def _own_variants(ours: nn.Module, peers: tuple[str, ...], mode: str) -> dict[str, nn.Module]:
    """``plain``: our model without its CPU fast path (the reference ops); ``fused``: ``fuse_for_inference``'s
    copy (folded layer scale, chunked MLP, the whole network in channels_last), inference only."""
    out: dict[str, nn.Module] = {}
    if "plain" in peers:
        out[OWN_VARIANTS["plain"]] = set_chunked_mlp(copy.deepcopy(ours), False)
    if "fused" in peers:
        if mode != "infer":
            raise UserError("--compare fused times fuse_for_inference's frozen copy: --mode infer only")
        out[OWN_VARIANTS["fused"]] = fuse_for_inference(ours)
    return out


def _drop_path(model: nn.Module) -> float:
    """The backbone's stochastic-depth rate (its last block's, as every peer spreads it linearly)."""
    from torchvision.ops import StochasticDepth

    return max((float(m.p) for m in model.modules() if isinstance(m, StochasticDepth)), default=0.0)


def _backbone_of(model: nn.Module) -> nn.Module:
    return model.backbone.body if hasattr(model.backbone, "body") else model.backbone


def _randomise(model: nn.Module, seed: int = 0) -> None:
    """The backbone's layer scales and biases far from their init, so a weight copied wrong shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in _backbone_of(model).named_parameters():
            if name.endswith(("gamma", "bias")):
                p.copy_(torch.rand(p.shape, generator=g) - 0.5)


# ------------------------------------------------------------------------------------------- the peers
def transformers_upernet(ours: nn.Module) -> nn.Module:
    """transformers' ``UperNetForSemanticSegmentation`` of ``ours``'s shape holding ``ours``'s weights."""
    try:
        from transformers import (
            ConvNextConfig,
            ConvNextV2Config,
            UperNetConfig,
            UperNetForSemanticSegmentation,
        )
    except ImportError:
        raise UserError(
            "--compare transformers needs the transformers package (pip install transformers)"
        ) from None
    from ..weights.upernet import HF_UPERNET, upernet_from_ours

    bb, head, aux = ours.backbone, ours.decode_head, ours.auxiliary_head
    v2 = bb.use_grn  # ConvNeXt V2: transformers' ConvNextV2 backbone (GRN, no layer scale)
    backbone_cfg = (ConvNextV2Config if v2 else ConvNextConfig)(
        depths=[len(s) for s in bb.stages],
        hidden_sizes=bb.feature_info.channels(),
        drop_path_rate=_drop_path(ours),
        out_features=[f"stage{i + 1}" for i in range(len(bb.stages))],
        **({} if v2 else {"layer_scale_init_value": 1.0}),
    )
    cfg = UperNetConfig(
        backbone_config=backbone_cfg,
        hidden_size=head.conv_seg.in_channels,
        pool_scales=[m[0].output_size for m in head.psp_modules],
        use_auxiliary_head=aux is not None,
        auxiliary_channels=aux.conv_seg.in_channels if aux is not None else 256,
        auxiliary_loss_weight=AUX_WEIGHT,
        loss_ignore_index=IGNORE_INDEX,
        num_labels=ours.num_classes,
    )
    peer = UperNetForSemanticSegmentation(cfg)
    peer.load_state_dict(upernet_from_ours(ours.state_dict(), HF_UPERNET), strict=True)
    return peer


class TimmFPN(nn.Module):
    """timm's ``features_only`` ConvNeXt, the official per-stage LayerNorms (``norms``) and torchvision's
    FPN, named as torchvision's ``BackboneWithFPN`` (``body``, ``fpn``, ``out_channels``). Not
    ``BackboneWithFPN`` itself: its ``IntermediateLayerGetter`` takes a child's output as the next child's
    input, so a norm on each output (and not on the trunk) has no place in it."""

    def __init__(self, body: nn.Module, out_channels: int) -> None:
        super().__init__()
        from timm.layers import LayerNorm2d
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        chs = body.feature_info.channels()
        self.body = body
        self.norms = nn.ModuleList(LayerNorm2d(c, eps=1e-6) for c in chs)
        self.fpn = FeaturePyramidNetwork(chs, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = [norm(f) for norm, f in zip(self.norms, self.body(x))]
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def _timm_detector_state_dict(ours: nn.Module, backbone_name: str) -> dict[str, Tensor]:
    """Our detector's state dict in the peer's names: the trunk in timm's (its ``features_only`` model
    flattens ``stem.0`` / ``stages.0`` to ``stem_0`` / ``stages_0``), ``norm{i}`` -> ``norms.{i}``, the
    FPN and heads as they are (torchvision's on both sides)."""
    from ..weights.formats import from_ours

    sd = ours.state_dict()
    trunk = {k[len("backbone.body.") :]: v for k, v in sd.items() if k.startswith("backbone.body.")}
    norms = {k: trunk.pop(k) for k in list(trunk) if re.match(r"^norm\d\.", k)}
    out = {k: v for k, v in sd.items() if not k.startswith("backbone.body.")}
    for k, v in from_ours(trunk, "timm", backbone_name).items():
        out["backbone.body." + re.sub(r"^(stem|stages)\.(\d+)\.", r"\1_\2.", k)] = v
    out.update({f"backbone.norms.{k[4]}{k[5:]}": v for k, v in norms.items()})
    return out


def torchvision_detector(ours: nn.Module, name: str, options: dict[str, Any]) -> nn.Module:
    """torchvision's ``MaskRCNN`` / ``FasterRCNN`` over :class:`TimmFPN` with ``ours``'s weights, built with
    the ``options`` ours was built with (torchvision's detector options; ``depths``/``dims`` for timm) and
    ours's RPN training proposals (the official 1000, where torchvision's default is 2000)."""
    try:
        import timm
    except ImportError:
        raise UserError(
            "--compare torchvision (detection) needs the timm package (pip install timm)"
        ) from None
    from torchvision.models.detection import FasterRCNN, MaskRCNN

    detector, _, backbone_name = name.partition("_")
    cls = MaskRCNN if detector == "maskrcnn" else FasterRCNN
    known = {p for c in (cls, FasterRCNN) for p in inspect.signature(c.__init__).parameters}
    head = {k: v for k, v in options.items() if k in known}
    head.setdefault("rpn_post_nms_top_n_train", ours.rpn._post_nms_top_n["training"])
    body = timm.create_model(
        backbone_name,
        pretrained=False,
        features_only=True,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=_drop_path(ours),
        **{k: options[k] for k in ("depths", "dims") if k in options},
    )
    fpn = TimmFPN(body, ours.backbone.out_channels)
    peer = cls(fpn, num_classes=ours.roi_heads.box_predictor.cls_score.out_features, **head)
    peer.load_state_dict(_timm_detector_state_dict(ours, backbone_name), strict=True)
    return peer


# ----------------------------------------------------------------------------------------- the steps
@dataclass
class DenseContestant:
    name: str
    model: nn.Module
    step: Callable[[], Any] = field(repr=False)
    note: str = ""


def _seg_steps(
    name: str, model: nn.Module, x: Tensor, labels: Tensor, mode: str, dev: torch.device, dtype: Any
) -> tuple[Callable[[], Any], str]:
    """The timed call: logits (inference) or forward + decode and 0.4 x auxiliary cross-entropy + backward
    + AdamW (training), each model as its authors run it (transformers computes the loss given labels)."""
    hf = name == "transformers"
    if mode == "infer":
        model.eval()

        def infer() -> Tensor:
            with torch.inference_mode(), autocast(dev, dtype):
                return model(pixel_values=x).logits if hf else model(x)

        return infer, ""
    model.train()
    opt, kind = adamw(model.parameters(), dev)

    def loss() -> Tensor:
        if hf:
            return model(pixel_values=x, labels=labels).loss
        logits, aux = model.forward_all(x)
        out = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
        if aux is not None:
            out = out + AUX_WEIGHT * F.cross_entropy(aux, labels, ignore_index=IGNORE_INDEX)
        return out

    def train_step() -> Tensor:
        with autocast(dev, dtype):
            value = loss()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        return value

    return train_step, f"AdamW {kind}"


def _det_steps(
    model: nn.Module,
    images: list[Tensor],
    targets: list[dict[str, Tensor]],
    mode: str,
    dev: torch.device,
    dtype: Any,
) -> tuple[Callable[[], Any], str]:
    """The timed call: detections (eval, a list of images) or the summed loss dict + backward + AdamW."""
    if mode == "infer":
        model.eval()

        def infer() -> Any:
            with torch.inference_mode(), autocast(dev, dtype):
                return model(images)

        return infer, ""
    model.train()
    opt, kind = adamw(model.parameters(), dev)

    def train_step() -> Tensor:
        with autocast(dev, dtype):
            value = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        return value

    return train_step, f"AdamW {kind}"


def _det_data(
    batch: int, size: int, num_classes: int, masks: bool, dev: torch.device, g: torch.Generator
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Random images in [0, 1] and three boxes per image (with box-shaped masks), as COCO's loader gives."""
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, size, size, generator=g).to(dev))
        xy = torch.rand(3, 2, generator=g) * size * 0.6
        wh = size * (0.1 + 0.3 * torch.rand(3, 2, generator=g))
        boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], 1).round()
        target = {"boxes": boxes.to(dev), "labels": torch.randint(1, num_classes, (3,), generator=g).to(dev)}
        if masks:
            m = torch.zeros(3, size, size, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
                m[i, y0:y1, x0:x1] = 1
            target["masks"] = m.to(dev)
        targets.append(target)
    return images, targets


def _max_diff(a: Any, b: Any) -> float:
    if isinstance(a, dict):
        return max(_max_diff(a[k], b[k]) for k in a)
    return (a.float() - b.float()).abs().max().item()


# ------------------------------------------------------------------------------------------------ run
def run_dense_benchmark(
    task: str,
    model: str | None = None,
    *,
    batch_size: int | None = None,
    img_size: int | None = None,
    mode: str = "infer",
    amp: str | None = None,
    device: str = "auto",
    compare: tuple[str, ...] = (),
    repeats: int = 5,
    warmup: int = 1,
    fuse: bool = True,
    tuned_malloc: bool = False,
    options: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time ``task``'s model (ours, and the peers in ``compare``) and return every figure as plain data.

    ``fuse=False`` times our plain ops (no chunked MLP: the reference). Each peer's outputs (segmentation:
    logits; detection: the FPN's five maps) are compared with ours on one batch before timing and the
    largest difference reported (``max_abs_diff_vs_ours``). ``options`` go to our constructor (head widths,
    torchvision's detector options: the peer is built to match)."""
    say = progress or (lambda _msg: None)
    name = dense_model_name(task, model)
    peers = _check_peers(task, compare)
    if mode not in ("infer", "train"):
        raise UserError(f"--mode must be infer or train, not {mode!r}")
    if repeats < 1 or (batch_size is not None and batch_size < 1):
        raise UserError("--repeats and --batch-size must be >= 1")
    dev = resolve_device(device)
    dtype = amp_dtype(amp, dev) if amp else None
    _, cpu_size, gpu_size, default_batch = DEFAULTS[task]
    size = img_size or (gpu_size if dev.type == "cuda" else cpu_size)
    batch = batch_size or default_batch
    if task == "segmentation" and mode == "train" and batch < 2:
        raise UserError(
            "--mode train of a UperNet needs --batch-size >= 2 (its pooling branch's BatchNorm sees one "
            "value per channel from one image)"
        )
    if size < 32:
        raise UserError(
            f"--img-size {size} is below the 32 px a ConvNeXt backbone needs (it downsamples 32x)"
        )

    torch.manual_seed(0)
    head = {"min_size": size, "max_size": size} if task == "detection" else {}
    head.update(options or {})
    ours = build_model(name, **head)
    _randomise(ours)
    ours = set_chunked_mlp(ours, fuse).to(dev)
    g = torch.Generator().manual_seed(0)
    say(f"building the peers: {', '.join(peers)}" if peers else "building the model")
    others = _own_variants(ours, peers, mode)
    if task == "segmentation":
        others.update({p: transformers_upernet(ours).to(dev) for p in peers if p not in OWN_VARIANTS})
        x = torch.randn(batch, 3, size, size, generator=g).to(dev)
        labels = torch.randint(0, ours.num_classes, (batch, size, size), generator=g).to(dev)
        with torch.inference_mode():
            ref = ours.eval()(x[:2])
            diffs = {"ours": 0.0}
            for p, m in others.items():
                out = m.eval()(pixel_values=x[:2]).logits if p == "transformers" else m.eval()(x[:2])
                diffs[p] = _max_diff(out, ref)
        checked = "logits"
        steps = {
            n: _seg_steps(n, m, x, labels, mode, dev, dtype) for n, m in {"ours": ours, **others}.items()
        }
    else:
        others.update(
            {p: torchvision_detector(ours, name, head).to(dev) for p in peers if p not in OWN_VARIANTS}
        )
        masks = name.startswith("maskrcnn_")
        images, targets = _det_data(
            batch, size, ours.roi_heads.box_predictor.cls_score.out_features, masks, dev, g
        )
        with torch.inference_mode():
            xb = torch.stack(images[:2])
            ref = ours.eval().backbone(xb)
            diffs = {"ours": 0.0}
            diffs.update({p: _max_diff(m.eval().backbone(xb), ref) for p, m in others.items()})
        checked = "FPN outputs"
        steps = {
            n: _det_steps(m, images, targets, mode, dev, dtype) for n, m in {"ours": ours, **others}.items()
        }

    ours_note = "chunked MLP where faster (models/chunked_mlp.py)" if fuse else "plain ops"
    peer_notes = {
        OWN_VARIANTS["plain"]: "our model, plain ops (no chunked MLP)",
        OWN_VARIANTS["fused"]: "fuse_for_inference (folded layer scale, chunked MLP, channels_last)",
        "transformers": "UperNetForSemanticSegmentation, ConvNeXt backbone; infers the auxiliary head too",
        "torchvision": f"{'MaskRCNN' if name.startswith('maskrcnn_') else 'FasterRCNN'} over timm's ConvNeXt "
        "(features_only) + per-stage LayerNorm + FeaturePyramidNetwork",
    }
    contestants = [
        DenseContestant(
            n, m, step, "; ".join(filter(None, [ours_note if n == "ours" else peer_notes[n], extra]))
        )
        for (n, (step, extra)), m in zip(steps.items(), [ours, *others.values()])
    ]
    return _time(task, name, mode, batch, size, dev, amp, repeats, warmup, tuned_malloc, contestants, diffs,
                 checked, ours, say)  # fmt: skip


def _time(
    task: str,
    name: str,
    mode: str,
    batch: int,
    size: int,
    dev: torch.device,
    amp: str | None,
    repeats: int,
    warmup: int,
    tuned_malloc: bool,
    contestants: list[DenseContestant],
    diffs: dict[str, float],
    checked: str,
    ours: nn.Module,
    say: Callable[[str], None],
) -> dict[str, Any]:
    say("warm-up")
    for c in contestants:
        for _ in range(warmup):
            c.step()
    memory, mem_method = {}, ""
    for c in contestants:
        memory[c.name], mem_method = measure_memory(c.step, dev)
    if tuned_malloc and dev.type == "cpu":
        tune_cpu_allocator()
    times_of = _rotated_rounds(contestants, dev, repeats, say)
    results = []
    for c in contestants:
        times = times_of[c.name]
        res = {
            "name": c.name,
            "images_per_s": batch / statistics.median(times),
            "step_ms": statistics.median(times) * 1e3,
            "step_ms_rounds": [t * 1e3 for t in times],
            "peak_memory_mb": memory[c.name],
            "max_abs_diff_vs_ours": diffs[c.name],
            "note": c.note,
        }
        if c.name != "ours":
            res["ours_speedup"] = ratio_of_medians(times, times_of["ours"])
            res["ours_speedup_range"] = ratio_spread(times, times_of["ours"])
        results.append(res)
    return {
        "task": task, "model": name, "mode": mode, "batch_size": batch, "img_size": size, "device": str(dev),
        "device_name": device_name(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "versions": _versions([c.name for c in contestants]), "amp": amp, "repeats": repeats,
        "malloc": "tuned" if allocator_tuned() else "default", "params_m": count_params(ours) / 1e6,
        "checked": checked, "memory_method": mem_method, "results": results,
    }  # fmt: skip


def _rotated_rounds(
    contestants: list[DenseContestant], dev: torch.device, repeats: int, say: Callable[[str], None]
) -> dict[str, list[float]]:
    """Seconds per step over ``repeats`` rounds, every contestant once per round, the order rotated by one
    each round, so that whatever a place in the round costs (the first call after another model's, a load
    that changes over a step of seconds) falls on every contestant alike rather than on ours."""
    times: dict[str, list[float]] = {c.name: [] for c in contestants}
    for r in range(repeats):
        say(f"round {r + 1}/{repeats}")
        k = r % len(contestants)
        for c in contestants[k:] + contestants[:k]:
            times[c.name].append(time_call(c.step, dev))
    return times


def _versions(names: list[str]) -> dict[str, str]:
    import importlib.metadata as md

    packages = {"transformers": ["transformers"], "torchvision": ["torchvision", "timm"]}
    out = {}
    for n in names:
        for pkg in packages.get(n, []):
            try:
                out[pkg] = md.version(pkg)
            except md.PackageNotFoundError:
                pass
    return out


def format_dense_report(report: dict[str, Any]) -> str:
    """The human table: one row per contestant, the speed-up of ours over each peer."""
    r = report
    versions = "".join(f", {k} {v}" for k, v in r["versions"].items())
    lines = [
        f"{r['model']} {r['mode']}, batch {r['batch_size']}, {r['img_size']}px, {r['device_name']}, "
        f"{r['threads']} threads, torch {r['torch']}{versions}"
        + (f", amp {r['amp']}" if r["amp"] else "")
        + (", malloc tuned" if r.get("malloc") == "tuned" else ""),
        f"params {r['params_m']:.1f}M; median of {r['repeats']} interleaved rounds",
        f"{'':<14}{'images/s':>10}{'step ms':>10}{'peak MiB':>10}{'max|diff|':>11}{'ours x':>8}"
        f"{'rounds':>11}",
    ]
    for res in r["results"]:
        sp = f"{res['ours_speedup']:.2f}" if "ours_speedup" in res else "-"
        spread = "{:.2f}-{:.2f}".format(*res["ours_speedup_range"]) if "ours_speedup_range" in res else ""
        lines.append(
            f"{res['name']:<14}{res['images_per_s']:>10.2f}{res['step_ms']:>10.0f}{res['peak_memory_mb']:>10.0f}"
            f"{res['max_abs_diff_vs_ours']:>11.1e}{sp:>8}{spread:>11}"
        )
    lines += [f"{res['name']}: {res['note']}" for res in r["results"]]
    lines.append(
        f"'ours x' = the peer's median step time / ours; 'rounds' the lowest-highest per-round ratio; "
        f"max|diff|: {r['checked']} against ours on one batch, before timing. Memory: {r['memory_method']}."
    )
    return "\n".join(lines)
