"""FCMAE (models/fcmae.py): the dense-masked encoder against the sparse semantics, the decoder and loss."""

from __future__ import annotations

import torch

from convnext.models import FCMAE, create_fcmae


def test_forward_shapes_and_gradients() -> None:
    model = create_fcmae("fcmae_convnextv2_atto", img_size=64, decoder_embed_dim=64)
    x = torch.randn(2, 3, 64, 64)
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert out.pred.shape == (2, 4, 32 * 32 * 3) and out.mask.shape == (2, 4) and out.loss.dim() == 0
    assert out.mask.sum(1).tolist() == [3.0, 3.0]  # L - int(L * 0.4) masked per image
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert isinstance(model, FCMAE)


# -- an independent computation of the sparse semantics ---------------------------------------------------
# The official encoder (MinkowskiEngine) holds a set of sites per image and computes every layer on those
# sites only. This reference does the same with explicit gathers: a list of (image, row, column) sites and a
# (sites, C) feature matrix, a depthwise conv as the sum over the visible neighbours that exist, the stride-2
# conv over the sites of each 2x2 window, GRN over the sites. Nothing here uses the dense model's masking.


class _Sparse:
    def __init__(self, coords: torch.Tensor, feats: torch.Tensor, shape: tuple[int, int, int]) -> None:
        self.coords, self.feats, self.shape = coords, feats, shape  # coords (M, 3): image, row, column
        n, h, w = shape
        self.table = torch.full((n, h, w), -1, dtype=torch.long)
        self.table[coords[:, 0], coords[:, 1], coords[:, 2]] = torch.arange(len(coords))

    def neighbour(self, dr: int, dc: int) -> torch.Tensor:
        """Index of the site at (row + dr, column + dc) for every site, -1 where there is none."""
        n, h, w = self.shape
        r, c = self.coords[:, 1] + dr, self.coords[:, 2] + dc
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        idx = torch.full((len(self.coords),), -1, dtype=torch.long)
        idx[inside] = self.table[self.coords[inside, 0], r[inside], c[inside]]
        return idx


def _sparse_dwconv(x: _Sparse, conv: torch.nn.Conv2d) -> torch.Tensor:
    k = conv.kernel_size[0]
    out = conv.bias.expand(len(x.coords), -1).clone()
    for a in range(k):
        for b in range(k):
            j = x.neighbour(a - k // 2, b - k // 2)
            have = j >= 0
            out[have] += conv.weight[:, 0, a, b] * x.feats[j[have]]
    return out


def _sparse_grn(grn: torch.nn.Module, x: _Sparse, feats: torch.Tensor, stats: str) -> torch.Tensor:
    gamma, beta = grn.gamma.reshape(-1), grn.beta.reshape(-1)
    out = torch.empty_like(feats)
    groups = [torch.ones(len(feats), dtype=torch.bool)] if stats == "batch" else []
    if stats == "sample":
        groups = [x.coords[:, 0] == n for n in range(x.shape[0])]
    for rows in groups:
        f = feats[rows]
        gx = f.pow(2).sum(0).sqrt()
        nx = gx / (gx.mean() + grn.eps)
        out[rows] = gamma * (f * nx) + beta + f
    return out


def _sparse_block(blk: torch.nn.Module, x: _Sparse, stats: str) -> _Sparse:
    f = _sparse_dwconv(x, blk.dwconv)
    f = torch.nn.functional.layer_norm(
        f, blk.norm.normalized_shape, blk.norm.weight, blk.norm.bias, blk.norm.eps
    )
    f = torch.nn.functional.gelu(blk.pwconv1(f))
    f = _sparse_grn(blk.grn, x, f, stats)
    f = blk.pwconv2(f)
    return _Sparse(x.coords, x.feats + f, x.shape)


def _sparse_downsample(layer: torch.nn.Sequential, x: _Sparse) -> _Sparse:
    ln, conv = layer[0], layer[1]
    f = torch.nn.functional.layer_norm(x.feats, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    src = _Sparse(x.coords, f, x.shape)
    coords = torch.unique(torch.stack([x.coords[:, 0], x.coords[:, 1] // 2, x.coords[:, 2] // 2], 1), dim=0)
    n, h, w = x.shape
    out = conv.bias.expand(len(coords), -1).clone()
    for a in range(2):
        for b in range(2):
            r, c = 2 * coords[:, 1] + a, 2 * coords[:, 2] + b
            j = src.table[coords[:, 0], r, c]
            have = j >= 0
            out[have] += src.feats[j[have]] @ conv.weight[:, :, a, b].T
    return _Sparse(coords, out, (n, h // 2, w // 2))


def sparse_reference(model: FCMAE, imgs: torch.Tensor, mask: torch.Tensor, stats: str) -> torch.Tensor:
    enc, p = model.encoder, model.patch_size
    dense = enc.downsample_layers[0](imgs)  # the official stem is dense: conv + LayerNorm on the whole image
    n, _, h, w = dense.shape
    s, gw = p // 4, imgs.shape[3] // p
    coords = torch.tensor(
        [
            (i, r, c)
            for i in range(n)
            for r in range(h)
            for c in range(w)
            if mask[i, (r // s) * gw + c // s] == 0
        ],
        dtype=torch.long,
    ).reshape(-1, 3)
    x = _Sparse(coords, dense[coords[:, 0], :, coords[:, 1], coords[:, 2]], (n, h, w))
    for i, stage in enumerate(enc.stages):
        if i:
            x = _sparse_downsample(enc.downsample_layers[i], x)
        for blk in stage:
            x = _sparse_block(blk, x, stats)
    n, h, w = x.shape
    out = torch.zeros(n, x.feats.shape[1], h, w, dtype=x.feats.dtype)  # what the official x.dense() gives
    out[x.coords[:, 0], :, x.coords[:, 1], x.coords[:, 2]] = x.feats
    return out


def _tiny(grn_stats: str = "sample", **kw) -> FCMAE:
    torch.manual_seed(0)
    model = FCMAE(
        "convnextv2_atto",
        depths=(1, 1, 2, 1),
        dims=(8, 16, 24, 32),
        img_size=96,
        decoder_embed_dim=16,
        grn_stats=grn_stats,
        **kw,
    ).double()
    with torch.no_grad():  # GRN starts as the identity and LayerNorm as (1, 0): make every statistic matter
        for name, prm in model.named_parameters():
            if "grn" in name or "norm" in name or "downsample_layers.0.1" in name:
                prm.normal_(0.5, 0.3)
    return model


def test_dense_masked_encoder_equals_the_sparse_computation() -> None:
    for stats in ("sample", "batch"):
        model = _tiny(stats)
        imgs = torch.randn(3, 3, 96, 96, dtype=torch.float64)
        mask = model.gen_random_mask(imgs, 0.6, torch.Generator().manual_seed(1)).double()
        mask[2] = torch.tensor([1, 1, 1, 1, 0, 1, 1, 1, 0], dtype=torch.float64)  # sites at the edge too
        with torch.no_grad():
            ours = model.forward_encoder(imgs, mask)
            ref = sparse_reference(model, imgs, mask, stats)
        assert ours.shape == ref.shape == (3, 32, 3, 3)
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
        masked = mask.reshape(3, 1, 3, 3).expand_as(ours) == 1
        assert (ours[masked] == 0).all() and (ours[~masked] != 0).all()
        # the reference is not trivially equal to the plain dense trunk: masking matters
        with torch.no_grad():
            plain = model.encoder.forward_features(
                imgs * (1 - model.unpatchify(mask[..., None].expand(-1, -1, 32 * 32 * 3)))
            )
        assert not torch.allclose(plain[~masked], ref[~masked], atol=1e-3)


def test_grn_statistics_per_image_over_visible_sites() -> None:
    model = _tiny("sample")
    imgs = torch.randn(2, 3, 96, 96, dtype=torch.float64)
    mask = model.gen_random_mask(imgs, 0.6, torch.Generator().manual_seed(2)).double()
    with torch.no_grad():
        both = model.forward_encoder(imgs, mask)
        one = model.forward_encoder(imgs[:1], mask[:1])
    torch.testing.assert_close(both[:1], one, rtol=1e-12, atol=1e-12)  # no statistic crosses images
    model.grn_stats = "batch"  # the official MinkowskiGRN's: one statistic over the batch's visible sites
    with torch.no_grad():
        assert not torch.allclose(model.forward_encoder(imgs, mask)[:1], one)


def test_masked_pixels_never_reach_the_encoder() -> None:
    model = _tiny()
    imgs = torch.randn(2, 3, 96, 96, dtype=torch.float64, requires_grad=True)
    mask = model.gen_random_mask(imgs, 0.6, torch.Generator().manual_seed(3)).double()
    pix = model.unpatchify(mask[..., None].expand(-1, -1, 32 * 32 * 3)) == 1  # pixels of masked patches
    feats = model.forward_encoder(imgs, mask)
    feats.square().sum().backward()
    assert (imgs.grad[pix] == 0).all() and (imgs.grad[~pix] != 0).any()
    with torch.no_grad():
        changed = imgs.detach().clone()
        changed[pix] = torch.randn(int(pix.sum()), dtype=torch.float64) * 10
        assert torch.equal(model.forward_encoder(changed, mask), feats.detach())


def test_loss_is_on_masked_patches_with_per_patch_normalised_targets() -> None:
    model = _tiny()
    imgs = torch.randn(2, 3, 96, 96, dtype=torch.float64)
    mask = model.gen_random_mask(imgs, 0.6, torch.Generator().manual_seed(4)).double()
    pred = torch.randn(2, 9, 32 * 32 * 3, dtype=torch.float64)
    loss = model.forward_loss(imgs, pred, mask)
    patches = model.patchify(imgs)
    t = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()
    per_patch = (pred - t).pow(2).mean(-1)
    torch.testing.assert_close(loss, per_patch[mask == 1].mean())
    visible = patches.clone()
    visible[mask == 0] += 5.0  # a visible patch's target plays no part
    assert torch.equal(model.forward_loss(model.unpatchify(visible), pred, mask), loss)
    model.norm_pix_loss = False
    torch.testing.assert_close(
        model.forward_loss(imgs, pred, mask), (pred - patches).pow(2).mean(-1)[mask == 1].mean()
    )


def test_patchify_is_the_official_layout_and_round_trips() -> None:
    model = _tiny()
    imgs = torch.randn(2, 3, 96, 96, dtype=torch.float64)
    x = model.patchify(imgs)
    # patch (i, j) holds pixel (i*p + a, j*p + b, channel c) at a*p*3 + b*3 + c
    i, j, a, b, c, p = 1, 2, 5, 17, 2, 32
    assert x[1, i * 3 + j, a * p * 3 + b * 3 + c] == imgs[1, c, i * p + a, j * p + b]
    assert torch.equal(model.unpatchify(x), imgs)


def test_random_mask_counts_and_generator() -> None:
    model = _tiny()
    imgs = torch.zeros(4, 3, 96, 96)
    m1 = model.gen_random_mask(imgs, 0.6, torch.Generator().manual_seed(5))
    m2 = model.gen_random_mask(imgs, 0.6, torch.Generator().manual_seed(5))
    assert torch.equal(m1, m2) and m1.shape == (4, 9)
    assert m1.sum(1).tolist() == [9 - int(9 * 0.4)] * 4


def test_decoder_puts_the_mask_token_at_masked_sites() -> None:
    model = _tiny()
    feats = torch.randn(1, 32, 3, 3, dtype=torch.float64)
    mask = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.float64)
    seen = []
    model.decoder.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    out = model.forward_decoder(feats, mask)
    torch.testing.assert_close(seen[0][0, :, 0, 0], model.mask_token[0, :, 0, 0])
    torch.testing.assert_close(out, model.pred(model.decoder(seen[0])))  # pred as the official 1x1 conv
    torch.testing.assert_close(seen[0][0, :, 1, 1], model.proj(feats)[0, :, 1, 1])


# -- checkpoints in the official layout --------------------------------------------------------------------


def _official_spec(depths, dims, dec: int, p: int) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the official FCMAE's state dict (models/fcmae.py around convnextv2_sparse.py), as
    its modules make them: MinkowskiConvolution kernel (k*k, in, out) and bias (1, out), the depthwise
    kernel (k*k, C), MinkowskiLayerNorm's ``ln``, MinkowskiLinear's ``linear``, MinkowskiGRN (1, C)."""
    spec: dict[str, tuple[int, ...]] = {"mask_token": (1, dec, 1, 1)}
    e = "encoder.downsample_layers"
    spec.update({f"{e}.0.0.weight": (dims[0], 3, 4, 4), f"{e}.0.0.bias": (dims[0],)})
    spec.update({f"{e}.0.1.weight": (dims[0],), f"{e}.0.1.bias": (dims[0],)})
    for i in range(1, 4):
        spec.update({f"{e}.{i}.0.ln.weight": (dims[i - 1],), f"{e}.{i}.0.ln.bias": (dims[i - 1],)})
        spec.update({f"{e}.{i}.1.kernel": (4, dims[i - 1], dims[i]), f"{e}.{i}.1.bias": (1, dims[i])})
    for i, (d, c) in enumerate(zip(depths, dims)):
        for j in range(d):
            b = f"encoder.stages.{i}.{j}"
            spec.update({f"{b}.dwconv.kernel": (49, c), f"{b}.dwconv.bias": (1, c)})
            spec.update({f"{b}.norm.ln.weight": (c,), f"{b}.norm.ln.bias": (c,)})
            spec.update({f"{b}.pwconv1.linear.weight": (4 * c, c), f"{b}.pwconv1.linear.bias": (4 * c,)})
            spec.update({f"{b}.grn.gamma": (1, 4 * c), f"{b}.grn.beta": (1, 4 * c)})
            spec.update({f"{b}.pwconv2.linear.weight": (c, 4 * c), f"{b}.pwconv2.linear.bias": (c,)})
    spec.update({"proj.weight": (dec, dims[-1], 1, 1), "proj.bias": (dec,)})
    b = "decoder.0"  # the dense V2 block (models/convnextv2.py)
    spec.update({f"{b}.dwconv.weight": (dec, 1, 7, 7), f"{b}.dwconv.bias": (dec,)})
    spec.update({f"{b}.norm.weight": (dec,), f"{b}.norm.bias": (dec,)})
    spec.update({f"{b}.pwconv1.weight": (4 * dec, dec), f"{b}.pwconv1.bias": (4 * dec,)})
    spec.update({f"{b}.grn.gamma": (1, 1, 1, 4 * dec), f"{b}.grn.beta": (1, 1, 1, 4 * dec)})
    spec.update({f"{b}.pwconv2.weight": (dec, 4 * dec), f"{b}.pwconv2.bias": (dec,)})
    spec.update({"pred.weight": (p * p * 3, dec, 1, 1), "pred.bias": (p * p * 3,)})
    return spec


def test_official_checkpoint_layout_round_trips(tmp_path) -> None:
    from convnext.weights.fcmae import from_official, load_fcmae, save_fcmae, to_official

    spec = _official_spec((1, 1, 2, 1), (8, 16, 24, 32), 16, 32)
    g = torch.Generator().manual_seed(0)
    official = {k: torch.randn(s, generator=g) for k, s in spec.items()}
    model = create_fcmae(
        "fcmae_convnextv2_atto", depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), decoder_embed_dim=16
    )
    model.load_state_dict(from_official(official), strict=True)  # every key, every shape
    back = to_official(model.state_dict())
    assert {k: tuple(v.shape) for k, v in back.items()} == spec
    assert all(torch.equal(back[k], official[k]) for k in spec)
    torch.save({"model": official, "epoch": 799}, tmp_path / "convnextv2_atto_1k_224_fcmae.pt")
    ours = load_fcmae(tmp_path / "convnextv2_atto_1k_224_fcmae.pt")
    assert all(torch.equal(ours[k], v) for k, v in model.state_dict().items())
    save_fcmae(model, tmp_path / "again.pt")
    written = torch.load(tmp_path / "again.pt", weights_only=True)["model"]
    assert all(torch.equal(written[k], official[k]) for k in spec) and written.keys() == official.keys()


def test_sparse_kernel_layout_becomes_the_dense_conv() -> None:
    # remap_checkpoint_keys: dense W[o, i, h, w] = kernel[w * k + h, i, o] (the offsets run down columns)
    from convnext.weights.fcmae import encoder_weights

    dw = torch.zeros(49, 8)
    dw[5 * 7 + 1, 3] = 1.0  # row 1, column 5
    full = torch.zeros(4, 8, 16)
    full[1 * 2 + 0, 2, 7] = 1.0  # row 0, column 1
    sd = encoder_weights(
        {"encoder.stages.0.0.dwconv.kernel": dw, "encoder.downsample_layers.1.1.kernel": full}
    )
    w = sd["stages.0.0.dwconv.weight"]
    assert w.shape == (8, 1, 7, 7) and w[3, 0, 1, 5] == 1 and w.sum() == 1
    w = sd["downsample_layers.1.1.weight"]
    assert w.shape == (16, 8, 2, 2) and w[7, 2, 0, 1] == 1 and w.sum() == 1


def test_fcmae_encoder_loads_into_the_classification_model(tmp_path) -> None:
    from convnext import create_model
    from convnext.weights.fcmae import encoder_weights, load_fcmae, save_fcmae, to_official

    torch.manual_seed(0)
    fcmae = create_fcmae("fcmae_convnextv2_atto", img_size=64, decoder_embed_dim=16)  # decoder: no part
    with torch.no_grad():
        for name, prm in fcmae.named_parameters():
            if "grn" in name:
                prm.normal_(0, 0.5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        direct = fcmae.encoder.forward_features(x)
        # nothing masked: the masked encoder is the plain trunk
        torch.testing.assert_close(fcmae.forward_encoder(x, torch.zeros(2, 4)), direct)
    path = save_fcmae(fcmae, tmp_path / "convnextv2_atto_1k_224_fcmae.pt")  # the official layout
    model = create_model("convnextv2_atto", pretrained=str(path), num_classes=10).eval()
    assert model.pretrained_info.format == "fcmae" and not model.pretrained_info.unexpected
    # strict, once the fresh classifier and final norm (never pre-trained) are added
    fresh = {k: v for k, v in model.state_dict().items() if k.startswith(("norm.", "head."))}
    assert sorted(fresh) == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    model.load_state_dict({**encoder_weights(to_official(fcmae.state_dict())), **fresh}, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), direct)
        torch.testing.assert_close(model(x), model.forward_head(direct))
    # our own layout (what a pre-training run's checkpoint holds) reads back as the model it was
    save_fcmae(fcmae, tmp_path / "ours.pt", official=False)
    assert all(torch.equal(v, fcmae.state_dict()[k]) for k, v in load_fcmae(tmp_path / "ours.pt").items())


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    model = _tiny()
    imgs = torch.randn(2, 3, 96, 96, dtype=torch.float64)
    mask = model.gen_random_mask(imgs, 0.6, torch.Generator().manual_seed(6))
    model(imgs, mask=mask).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.encoder.set_grad_checkpointing(True)
    model(imgs, mask=mask).loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)


def test_wrong_sizes_are_one_sentence() -> None:
    import pytest

    model = _tiny()
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.zeros(1, 3, 80, 96, dtype=torch.float64))
    with pytest.raises(ValueError, match="mask must be"):
        model(torch.zeros(1, 3, 96, 96, dtype=torch.float64), mask=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="total stride"):
        FCMAE("convnextv2_atto", patch_size=16, depths=(1, 1, 1, 1), dims=(8, 8, 8, 8))
    with pytest.raises(ValueError, match="unknown FCMAE model"):
        create_fcmae("fcmae_convnext_isotropic_small")
