"""``convnext.create_model``: an architecture plus weights from anywhere (models and weights joined).

``models/`` knows architectures only and ``weights/`` knows checkpoints only; this module is where the two
meet, so that neither imports the other.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .models.factory import build_model, get_variant


def create_model(
    name: str,
    pretrained: str | bool | dict | None = None,
    num_classes: int | None = None,
    **options: Any,
) -> nn.Module:
    """Build a ConvNeXt by name, optionally loading weights.

    ``name`` is an architecture (``convnext_tiny``) or a weight tag (``convnext_tiny.fb_in1k``).
    ``pretrained`` is a file, a URL or a registry tag; ``True`` takes the tag in ``name`` or the
    architecture's default weights. A ``num_classes`` other than the checkpoint's keeps the backbone and
    starts a fresh classifier (fine-tuning).
    """
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

    prepared = None
    if src is not None:
        from .weights.load import prepare

        # Read the checkpoint before building: without num_classes the model takes the checkpoint's
        # (21841 for a 22k one; 0, a pooled-feature model, for a backbone without classifier).
        prepared = prepare(src)
        if num_classes is None:
            num_classes = prepared.info.num_classes or 0
    model = build_model(arch, num_classes=num_classes if num_classes is not None else 1000, **options)
    if prepared is not None:
        from .weights.load import load_checkpoint

        model.pretrained_info = load_checkpoint(model, prepared)  # type: ignore[assignment]
    return model
