"""``convnext.create_model``: an architecture plus weights from anywhere (models and weights joined).

``models/`` knows architectures only and ``weights/`` knows checkpoints only; this module is where the two
meet, so that neither imports the other.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .models.factory import build_model, get_variant


def _pretrained_cfg(arch: str, num_classes: int, info: Any = None) -> dict[str, Any]:
    """timm's ``model.pretrained_cfg`` for our model: the weights' eval settings and provenance."""
    from .weights.presets import default_data_config

    entry = getattr(info, "entry", None)
    if entry is not None:
        cfg = entry.pretrained_cfg()
    else:
        data = getattr(info, "data_config", None) or default_data_config(get_variant(arch).input_size)
        cfg = {**data, "architecture": arch, "tag": None, "url": None, "license": None}
        if info is not None:
            cfg["file"] = info.path
    cfg["num_classes"] = num_classes  # the model's (a fresh classifier after fine-tuning)
    from .weights.presets import label_names  # timm's key: what each logit means, None when unknown

    same_head = info is not None and info.num_classes == num_classes  # not a fresh classifier
    cfg["label_names"] = label_names(info.class_names, num_classes) if same_head else None
    return cfg


def create_model(
    name: str,
    pretrained: str | bool | dict | None = None,
    num_classes: int | None = None,
    **options: Any,
) -> nn.Module:
    """Build a ConvNeXt by name, optionally loading weights.

    ``name`` is an architecture (``convnext_tiny``), a weight tag (``convnext_tiny.fb_in1k``) or, as in
    timm, a Hub repo (``"hf-hub:ORG/NAME"``: its architecture; its weights with ``pretrained=True``).
    ``pretrained`` is a file, a URL, a registry tag, a Hugging Face folder, a Hub repo
    (``"hf-hub:ORG/NAME[@REVISION]"``, timm's spelling) or a training run folder;
    ``True`` takes the tag in ``name`` or the architecture's default weights. A ``num_classes`` other than
    the checkpoint's keeps the backbone and starts a fresh classifier (fine-tuning). The model's
    ``pretrained_cfg`` (timm's keys) says how its weights expect images: ``convnext.create_transform``.
    """
    if name.startswith("hf-hub:"):  # timm's spelling: the repo names the architecture
        from .weights.hf_hub import architecture

        pretrained, name = (name if pretrained is True else pretrained), architecture(name)
    arch, _, tag = name.partition(".")
    get_variant(arch)  # an unknown name fails before any download
    src: str | dict | None
    if pretrained is True:
        from .weights.registry import default_tag

        src = name if tag else default_tag(arch)
    elif isinstance(pretrained, dict):  # an in-memory state dict, e.g. another library's model's
        src = pretrained
    elif pretrained:
        src = str(pretrained)
    else:
        src = None

    if arch.startswith(("upernet_", "maskrcnn_", "fasterrcnn_")):  # segmentation, detection
        return _create_dense(arch, src, num_classes, options)
    prepared = None
    if src is not None:
        from .weights.load import prepare

        # Read the checkpoint before building: without num_classes the model takes the checkpoint's
        # (21841 for a 22k one; 0, a pooled-feature model, for a backbone without classifier).
        prepared = prepare(src)
        if num_classes is None:
            num_classes = prepared.info.num_classes or 0
        from .weights.containers import model_options_of, run_model_options

        implied = {
            **model_options_of(prepared.state_dict, arch),
            **run_model_options(prepared.info.metadata.get("model"), arch),
        }
        options = {**implied, **options}
    n = num_classes if num_classes is not None else 1000
    model = build_model(arch, num_classes=n, **options)
    info = None
    if prepared is not None:
        from .weights.load import load_checkpoint

        info = load_checkpoint(model, prepared)
        model.pretrained_info = info  # type: ignore[assignment]
    model.pretrained_cfg = _pretrained_cfg(arch, n, info)  # type: ignore[assignment]
    return model


def _create_dense(arch: str, src: str | dict | None, num_classes: int | None, options: dict) -> nn.Module:
    """``upernet_<backbone>`` (150 classes, ADE20K's) or ``maskrcnn_``/``fasterrcnn_<backbone>`` (91 labels,
    torchvision's COCO with its background) from its task's checkpoints (mmseg's, mmdet's, transformers',
    ours) or a classifier's, whose weights initialise the backbone; the checkpoint's or ``num_classes``'s
    count wins over the default. Each task's reader is its ``weights/`` module."""
    if arch.startswith("upernet_"):
        from .weights import upernet as task

        prepare, options_of, is_own, load, default = (
            task.prepare_upernet, task.upernet_options, task.is_upernet, task.load_upernet, 150
        )  # fmt: skip
    else:
        from .weights import detection as task  # type: ignore[no-redef]

        prepare, options_of, is_own, load, default = (
            task.prepare_detection, task.detection_options, task.is_detection, task.load_detection, 91
        )  # fmt: skip
    prepared = prepare(src) if src is not None else None
    if prepared is not None:
        options = {**options_of(prepared, arch), **options}
        if num_classes is None and is_own(prepared.state_dict):  # a classifier's count is not ours
            num_classes = prepared.info.num_classes
    n = num_classes if num_classes is not None else default
    model = build_model(arch, num_classes=n, **options)
    info = load(model, prepared) if prepared is not None else None
    if info is not None:
        model.pretrained_info = info  # type: ignore[assignment]
    model.pretrained_cfg = _pretrained_cfg(arch, n, info)  # type: ignore[assignment]
    return model
