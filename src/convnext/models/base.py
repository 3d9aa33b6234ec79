"""What every ConvNeXt family shares: the timm-style interface, the init, and the memory-format boundary.

V1, V2 and isotropic models subclass :class:`ConvNeXtBase` and describe only their trunk, as a sequence of
*taps* (the hierarchical stages, or the isotropic blocks) whose outputs are the intermediate features. The
base gives all of them the same methods timm puts on every model: ``forward_features``, ``forward_head``,
``forward_intermediates``, ``get_classifier``, ``reset_classifier``, ``set_grad_checkpointing``, the
``features_only`` backbone with ``out_indices`` and ``feature_info``. The facts other layers need about an
architecture are asked of the model, here: its ``family`` and its total stride ``reduction`` (the smallest
input it takes), never read off its attribute names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .layer_ids import LayerIds
from .layers import LayerNorm2d

# The families, and their names in sentences: a new family adds itself here (ARCHITECTURE.md, "How to add").
Family = Literal["v1", "v2", "isotropic"]
FAMILIES: tuple[Family, ...] = ("v1", "v2", "isotropic")
FAMILY_TITLES: dict[Family, str] = {
    "v1": "ConvNeXt V1",
    "v2": "ConvNeXt V2",
    "isotropic": "isotropic ConvNeXt",
}


class FeatureInfo(list):
    """One dict per feature output (``num_chs``, ``reduction``, ``module``), with timm's accessors."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]

    def module_name(self) -> list[str]:
        return [f["module"] for f in self]


def to_channels_last(x: Tensor) -> Tensor:
    """The network runs in channels_last memory whatever the input's layout (same values, same shapes).

    Then the block's permutes to (N, H, W, C) are free views, the Linear layers read the data in place, and
    the 7x7 depthwise conv takes oneDNN's NHWC kernel (faster than NCHW's on CPU: BENCHMARKS.md); on GPU it is
    the layout cuDNN prefers under mixed precision. Costs one copy of the image.
    """
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def like_input(y: Tensor, x: Tensor) -> Tensor:
    """``y`` in the memory format the caller gave ``x`` in: channels_last inside stays an implementation
    detail, so a feature map handed back looks like the input did (contiguous unless it was channels_last)."""
    cl = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return y.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


def drop_path_rates(drop_path_rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Stochastic depth rising linearly from 0 at the first block to ``drop_path_rate`` at the last."""
    n = sum(depths)
    rates = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]
    out, start = [], 0
    for d in depths:
        out.append(rates[start : start + d])
        start += d
    return out


def init_weights(module: nn.Module) -> None:
    """The paper's init: truncated normal (std 0.02) for conv and linear weights, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ConvNeXtBase(nn.Module):
    """The shared interface. A subclass builds its trunk, then calls :meth:`_finish` with its taps.

    ``_tap(i, x)`` runs the trunk from tap ``i - 1``'s output (or the image, for ``i == 0``) to tap ``i``'s.
    """

    num_classes: int
    num_features: int
    features_only: bool
    out_indices: tuple[int, ...]
    feature_info: FeatureInfo
    grad_checkpointing: bool
    num_taps: int
    _reduction: int

    @property
    def family(self) -> Family:
        """``"v1"``, ``"v2"`` (GRN blocks) or ``"isotropic"``: what decides the peers' layouts that can hold
        the weights and which recipe keys apply (V2 has no layer scale)."""
        raise NotImplementedError

    @property
    def reduction(self) -> int:
        """The trunk's total stride (32 hierarchical: 4 x 2 x 2 x 2; 16 isotropic: the patch stem): the
        smallest input side in pixels, below which the convolutions fail deep inside."""
        return self._reduction

    def layer_ids(self) -> LayerIds | None:
        """Which layer each parameter is in, stem 0 to head, and the head's id: the order layer-wise lr
        decay scales by (``models/layer_ids.py`` has the official ones); None: the family defines none."""
        return None

    def _tap(self, i: int, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _finish(
        self,
        taps: list[dict],
        num_classes: int,
        head_init_scale: float,
        features_only: bool,
        out_indices: Sequence[int] | None,
        backbone_norms: bool,
    ) -> None:
        """Head or backbone norms, the paper's init, and ``feature_info``.

        ``backbone_norms``: a ``features_only`` model passes each output through its own LayerNorm
        (``norm{i}``, the official detection backbone's names); otherwise the outputs are the raw taps.
        """
        self.num_classes, self.num_features = num_classes, taps[-1]["num_chs"]
        self.features_only, self.grad_checkpointing = features_only, False
        self.num_taps = len(taps)
        self._reduction = int(taps[-1]["reduction"])
        indices = tuple(range(len(taps))) if out_indices is None else tuple(out_indices)
        if not indices or sorted(set(indices)) != list(indices) or not 0 <= indices[-1] < len(taps):
            raise ValueError(
                f"out_indices must be increasing indices of the {len(taps)} outputs, not {indices}"
            )
        self.out_indices = indices
        if features_only:
            self.feature_info = FeatureInfo(taps[i] for i in indices)
            if backbone_norms:
                for i in indices:
                    self.add_module(f"norm{i}", LayerNorm2d(taps[i]["num_chs"], eps=1e-6))
        else:
            self.feature_info = FeatureInfo(taps)
            self.norm = nn.LayerNorm(self.num_features, eps=1e-6)
            self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_weights)
        if isinstance(getattr(self, "head", None), nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward: less memory, at the cost of one more forward."""
        self.grad_checkpointing = enable

    def _blocks(self, blocks: nn.Module, x: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            for blk in blocks if isinstance(blocks, nn.Sequential) else [blocks]:
                x = checkpoint(blk, x, use_reentrant=False)
            return x
        return blocks(x)

    def _features(self, x: Tensor) -> Tensor:
        x = to_channels_last(x)
        for i in range(self.num_taps):
            x = self._tap(i, x)
        return x

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map, (N, C, H/32, W/32) (H/16 isotropic), in the input's memory format."""
        return like_input(self._features(x), x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool, LayerNorm, then the classifier; ``pre_logits`` stops before the classifier."""
        x = self.norm(x.mean((-2, -1)))
        return x if pre_logits else self.head(x)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        stop_early: bool = False,
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The outputs of the taps in ``indices`` (an int n: the last n; None: all), as timm's models give.

        Returns ``(final features, intermediates)``, or only the list with ``intermediates_only``;
        ``stop_early`` skips the trunk after the last tap asked for. In a ``features_only`` backbone each
        output passes through its norm. Every tensor comes back in the input's memory format.
        """
        n = self.num_taps
        if indices is None:
            take = list(range(n))
        elif isinstance(indices, int):
            take = list(range(n - indices, n))
        else:
            take = [i % n for i in indices]
        feats = []
        y = to_channels_last(x)
        for i in range(max(take) + 1 if stop_early else n):
            y = self._tap(i, y)
            if i in take:
                norm = getattr(self, f"norm{i}", None) if self.features_only else None
                feats.append(like_input(norm(y) if norm is not None else y, x))
        return feats if intermediates_only else (like_input(y, x), feats)

    def get_classifier(self) -> nn.Module:
        """The classifier (``nn.Identity`` for a pooled-feature model or a ``features_only`` backbone)."""
        return getattr(self, "head", nn.Identity())

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh head for fine-tuning on ``num_classes`` classes (0 leaves the pooled embedding)."""
        if self.features_only:
            raise ValueError("a features_only backbone has no classifier to reset")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            init_weights(self.head)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        if self.features_only:
            return self.forward_intermediates(x, self.out_indices, stop_early=True, intermediates_only=True)
        return self.forward_head(self._features(x))
