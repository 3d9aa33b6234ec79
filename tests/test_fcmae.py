"""FCMAE (models/fcmae.py): the dense-masked encoder against the sparse semantics, the decoder and loss."""

from __future__ import annotations

import torch

from convnext.models import FCMAE, create_fcmae


def test_forward_shapes_and_gradients() -> None:
    model = create_fcmae("fcmae_convnextv2_atto", img_size=64)
    x = torch.randn(2, 3, 64, 64)
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert out.pred.shape == (2, 4, 32 * 32 * 3) and out.mask.shape == (2, 4) and out.loss.dim() == 0
    assert out.mask.sum(1).tolist() == [3.0, 3.0]  # L - int(L * 0.4) masked per image
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert isinstance(model, FCMAE)
