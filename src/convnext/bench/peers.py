"""The peers' own models (timm, torchvision) holding our weights, so every contestant computes exactly the
same function: our state dict goes out through :func:`convnext.weights.formats.from_ours`, the inverse of the
converters that bring the peers' checkpoints in."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UserError

PEERS = ("timm", "torchvision")
TORCHVISION_MODELS = ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large")


def to_peer_state_dict(state_dict: dict[str, Tensor], peer: str, peer_model: nn.Module) -> dict[str, Tensor]:
    """Our state dict renamed and reshaped for ``peer`` ("timm" or "torchvision")."""
    from ..weights.formats import from_ours

    return from_ours(state_dict, peer, getattr(peer_model, "variant", None))


def check_peers(compare: tuple[str, ...]) -> tuple[str, ...]:
    """The peers named in ``--compare`` (empty names dropped); an unknown one is one sentence."""
    peers = tuple(p for p in compare if p)
    for p in peers:
        if p not in PEERS:
            raise UserError(f"unknown peer {p!r} for --compare; choose from {', '.join(PEERS)}")
    return peers


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise UserError("--compare timm needs the timm package (pip install timm)") from None
    return timm


def lacks(peer: str, name: str) -> str | None:
    """Why ``peer`` has no model ``name`` (one sentence), or None when it has one. A missing package or an
    unknown peer is an error instead: the user asked for something this machine cannot do."""
    if peer == "timm":
        return None if _timm().is_model(name) else f"timm has no {name}"
    if peer == "torchvision":
        if name in TORCHVISION_MODELS:
            return None
        return f"torchvision has no {name}; it ships only {', '.join(TORCHVISION_MODELS)}"
    raise UserError(f"unknown peer {peer!r} for --compare; choose from {', '.join(PEERS)}")


def build_peer(peer: str, name: str, num_classes: int) -> nn.Module:
    """The peer framework's own model of the same shape; one clear error when it is missing."""
    why = lacks(peer, name)
    if why is not None:
        raise UserError(why)
    if peer == "timm":
        return _timm().create_model(name, pretrained=False, num_classes=num_classes)
    import torchvision

    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)


def peer_models(
    ours: nn.Module, name: str, peers: tuple[str, ...], device: torch.device
) -> tuple[dict[str, nn.Module], list[str]]:
    """Each peer's model of architecture ``name`` with ``ours``'s weights loaded strictly, on ``device``,
    and a note for each peer left out because it has no such model (``--compare timm,torchvision`` on
    convnext_atto still compares with timm)."""
    out, notes = {}, []
    for p in peers:
        why = lacks(p, name)
        if why is not None:
            notes.append(f"{why}: left out of the comparison")
            continue
        pm = build_peer(p, name, ours.num_classes)
        pm.load_state_dict(to_peer_state_dict(ours.state_dict(), p, pm), strict=True)
        out[p] = pm.to(device)
    return out, notes
