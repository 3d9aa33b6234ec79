"""FCMAE, ConvNeXt V2's masked-autoencoder pre-training, in plain PyTorch (no MinkowskiEngine).

The official encoder (facebookresearch/ConvNeXt-V2, ``models/convnextv2_sparse.py``) runs the ConvNeXt V2
trunk as sparse convolution over the *visible* sites only: after the dense 4x4 stem and its LayerNorm the
masked positions are zeroed and dropped, and every later layer exists only on the visible set. Here the same
function is computed densely, on the full grid, with a 0/1 ``keep`` map (the patch mask upsampled to each
stage's resolution) at exactly the points where the dense layer would otherwise read or mix in a site that
sparse convolution does not have:

* **stem**: the stem conv and LayerNorm are dense in the official code too; the output is multiplied by
  ``keep``, so every masked site holds zero.
* **depthwise 7x7 conv** (a submanifold sparse conv: output sites = input sites): the sparse output at a
  visible site is the bias plus the kernel taps over its *visible* neighbours. A dense conv over an input
  that is zero at every masked site adds exactly zero for the masked neighbours, so the visible outputs
  agree; the outputs it also writes at masked sites are garbage that nothing visible reads (next bullet).
* **LayerNorm, the two Linear layers, GELU**: per site, so visible sites never see masked ones.
* **GRN**: its L2 norm over space is the only op that pools over sites. It is taken over ``x * keep``:
  visible sites only. (The official ``MinkowskiGRN`` pools over *every visible site of the batch*, one
  statistic shared by all samples, facebookresearch/ConvNeXt-V2 #86; ``grn_stats="batch"`` reproduces that,
  the default ``"sample"`` is per image, as the dense GRN that fine-tuning uses.)
* **block output**: the residual branch is multiplied by ``keep`` before the residual add. The block's input
  is zero at masked sites, so its output is too: the next depthwise conv again reads zeros there. This one
  multiply subsumes zeroing after the depthwise conv (whose garbage only ever reaches masked sites).
* **downsampling** (LayerNorm, then 2x2 stride-2 conv): the mask is at the encoder's output resolution
  (``patch_size`` = the trunk's total stride 32), so at every stage a patch covers whole aligned 2x2 windows:
  a visible output reads four visible inputs, a masked one four masked inputs (the LayerNorm's bias there is
  never read by a visible site). The sparse strided conv's output sites are exactly the visible windows; the
  dense output is multiplied by ``keep`` at the new resolution. (Its 2x2 taps are the dense conv's, as the
  official ``remap_checkpoint_keys`` reads the sparse kernel: the offsets (0, 0) .. (1, 1) of each window.)

So at visible sites the dense result equals the sparse one to float rounding, and masked sites hold zero, as
the official ``x.dense()`` densifies them (tests/test_fcmae.py checks this against an explicit gather over
the visible sites). The price: the dense trunk also computes on the masked 60%, which sparse convolution
skips (BENCHMARKS.md, "FCMAE pre-training step against the plain V2 step"). The blocks run
``_masked_block``, never ``Block.forward``: the CPU fast path of ``chunked_mlp.py`` does not apply (it never
takes GRN blocks anyway: GRN needs the whole map between the two GEMMs).

The decoder, mask token, patchify, random mask and loss are the official ``models/fcmae.py``'s: a 1x1
projection to ``decoder_embed_dim``, the mask token at masked sites, ``decoder_depth`` dense V2 blocks, a 1x1
prediction of each patch's ``patch_size**2 * 3`` pixels, and the mean squared error on masked patches only,
against per-patch normalised pixels (``norm_pix_loss``). ``self.encoder`` is a plain classification trunk
(state-dict keys = the classification model's minus ``norm`` and ``head``, which pre-training never uses),
so fine-tuning loads it as is.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .base import init_weights, to_channels_last
from .convnext import Block, ConvNeXt
from .factory import get_variant

__all__ = ["FCMAE", "FCMAE_VARIANTS", "FcmaeOutput", "create_fcmae", "upsample_mask"]

GrnStats = Literal["sample", "batch"]

# The sizes the official code pre-trains (models/fcmae.py): every V2 size but the V1-only ones.
FCMAE_VARIANTS: tuple[str, ...] = tuple(
    f"fcmae_convnextv2_{s}" for s in ("atto", "femto", "pico", "nano", "tiny", "base", "large", "huge")
)


class FcmaeOutput(NamedTuple):
    """``loss`` (scalar, on masked patches), ``pred`` (N, L, p*p*3, normalised pixels when
    ``norm_pix_loss``), ``mask`` (N, L) float, 1 = masked (the official convention)."""

    loss: Tensor
    pred: Tensor
    mask: Tensor


def upsample_mask(mask: Tensor, grid: tuple[int, int], scale: int) -> Tensor:
    """(N, L) patch mask -> (N, h*scale, w*scale, 1), each patch a ``scale`` x ``scale`` block."""
    n, (h, w) = mask.shape[0], grid
    m = mask.reshape(n, h, 1, w, 1).expand(n, h, scale, w, scale)
    return m.reshape(n, h * scale, w * scale, 1)


def _masked_grn(grn: nn.Module, x: Tensor, keep: Tensor, stats: GrnStats) -> Tensor:
    """GRN on channels-last ``x`` with its spatial L2 norm over visible sites only (per image or over the
    batch); masked sites come out as ``beta``, which the block's output mask removes."""
    x = x * keep
    dims = (1, 2) if stats == "sample" else (0, 1, 2)
    gx = torch.linalg.vector_norm(x, ord=2, dim=dims, keepdim=True)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + grn.eps)
    return torch.addcmul(grn.beta, x, 1 + grn.gamma * nx)


def _masked_block(blk: Block, x: Tensor, keep: Tensor, stats: GrnStats) -> Tensor:
    """``Block.forward`` with sparse semantics: ``x`` is zero at masked sites, and so is the result."""
    y = blk.dwconv(x).permute(0, 2, 3, 1)
    y = blk.act(blk.pwconv1(blk.norm(y)))
    if not isinstance(blk.grn, nn.Identity):
        y = _masked_grn(blk.grn, y, keep, stats)
    y = blk.pwconv2(y)
    if blk.gamma is not None:
        y = blk.gamma * y
    y = y * keep
    return x + blk.drop_path(y.permute(0, 3, 1, 2))


@torch.no_grad()
def _trunc_normal_(t: Tensor, std: float, bound: float = 2.0) -> Tensor:
    """``nn.init.trunc_normal_(t, std=std, a=-bound, b=bound)``'s law (a normal, values outside the bounds
    redrawn) by rejection: without its inverse-CDF sampler, which took most of an FCMAE's build time."""
    t.normal_(0.0, std)
    bad = t.abs() > bound
    while bool(bad.any()):
        t[bad] = torch.empty(int(bad.sum()), dtype=t.dtype, device=t.device).normal_(0.0, std)
        bad = t.abs() > bound
    return t


def _official_init(module: nn.Module) -> None:
    """The official FCMAE's init (models/fcmae.py ``_init_weights``, applied over the whole model): truncated
    normal with std 1 (timm's default, cut at +-2) for every conv and MLP weight of the encoder and the
    decoder's convs, std 0.02 for the encoder's downsampling convs (MinkowskiConvolution there), zero biases;
    the decoder blocks' Linear layers keep torch's default."""
    for name, m in module.named_modules():
        if name.startswith("decoder") and isinstance(m, nn.Linear):
            continue
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            downsample = name.startswith("encoder.downsample_layers.") and not name.startswith(
                "encoder.downsample_layers.0."
            )
            _trunc_normal_(m.weight, std=0.02 if downsample else 1.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class FCMAE(nn.Module):
    """Fully convolutional masked autoencoder around a hierarchical ConvNeXt (V2) encoder.

    ``patch_size`` must equal the encoder's total stride (32): the mask lives at the encoder's output
    resolution, one site per patch, as in the official code. ``grn_stats``: see the module docstring.
    ``official_init``: the official code's init (std 1 weights, ``_official_init``); False gives the
    classification models' init (std 0.02) everywhere. ``encoder_kwargs`` go to the encoder's constructor
    (``drop_path_rate``, or ``depths``/``dims`` for a custom size).
    """

    def __init__(
        self,
        encoder: str = "convnextv2_atto",
        patch_size: int = 32,
        mask_ratio: float = 0.6,
        decoder_depth: int = 1,
        decoder_embed_dim: int = 512,
        norm_pix_loss: bool = True,
        img_size: int = 224,
        in_chans: int = 3,
        grn_stats: GrnStats = "sample",
        official_init: bool = True,
        **encoder_kwargs: Any,
    ) -> None:
        super().__init__()
        variant = get_variant(encoder.partition(".")[0])
        if not issubclass(variant.build, ConvNeXt):  # type: ignore[arg-type]
            raise ValueError(f"FCMAE needs a hierarchical ConvNeXt encoder, not {encoder!r}")
        if grn_stats not in ("sample", "batch"):
            raise ValueError(f"grn_stats must be 'sample' or 'batch', not {grn_stats!r}")
        if encoder_kwargs.get("stem", "patch") != "patch":  # an overlapping stem leaks masked pixels
            raise ValueError("FCMAE needs the 4x4 patch stem: an overlapping stem sees across patches")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), not {mask_ratio}")
        enc = variant(num_classes=0, in_chans=in_chans, **encoder_kwargs)
        if patch_size != enc.reduction:
            raise ValueError(
                f"patch_size must be the encoder's total stride {enc.reduction}, not {patch_size}"
            )
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        # Pre-training never runs the classifier's pooled LayerNorm: without it DDP has no unused parameter.
        del enc.norm, enc.head
        enc.norm, enc.head = nn.Identity(), nn.Identity()
        enc.variant = encoder.partition(".")[0]  # type: ignore[assignment]
        self.encoder = enc
        self.encoder_name = encoder.partition(".")[0]
        self.patch_size, self.mask_ratio, self.img_size, self.in_chans = (
            patch_size,
            mask_ratio,
            img_size,
            in_chans,
        )
        self.num_patches = (img_size // patch_size) ** 2
        self.decoder_depth, self.decoder_embed_dim = decoder_depth, decoder_embed_dim
        self.norm_pix_loss, self.grn_stats = norm_pix_loss, grn_stats

        self.proj = nn.Conv2d(enc.dims[-1], decoder_embed_dim, kernel_size=1)
        self.mask_token = nn.Parameter(torch.zeros(1, decoder_embed_dim, 1, 1))
        self.decoder = nn.Sequential(
            *[
                Block(decoder_embed_dim, 0.0, layer_scale_init_value=None, use_grn=True)
                for _ in range(decoder_depth)
            ]
        )
        self.pred = nn.Conv2d(decoder_embed_dim, patch_size**2 * in_chans, kernel_size=1)
        if official_init:
            _official_init(self)
        else:
            self.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    # -- patches and masks -------------------------------------------------------------------------------

    def patchify(self, imgs: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, L, p*p*C), each patch's pixels in (row, column, channel) order."""
        p = self.patch_size
        n, c, hh, ww = imgs.shape
        if hh % p or ww % p:
            raise ValueError(f"image size {hh}x{ww} is not a multiple of the patch size {p}")
        h, w = hh // p, ww // p
        x = imgs.reshape(n, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(n, h * w, p * p * c)

    def unpatchify(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """(N, L, p*p*C) -> (N, C, H, W); ``grid`` (h, w) in patches, square when not given."""
        p, c = self.patch_size, self.in_chans
        n, length = x.shape[:2]
        if grid is None:
            h = w = int(round(length**0.5))
            if h * w != length:
                raise ValueError(f"{length} patches are not a square grid; pass grid=(h, w)")
        else:
            h, w = grid
        x = x.reshape(n, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(n, c, h * p, w * p)

    def gen_random_mask(
        self, x: Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> Tensor:
        """A random (N, L) mask for images ``x``: 1 = masked, exactly ``L - int(L * (1 - mask_ratio))``
        patches per image, as the official code (random ranks, keep the lowest)."""
        n = x.shape[0]
        length = (x.shape[2] // self.patch_size) * (x.shape[3] // self.patch_size)
        len_keep = int(length * (1 - mask_ratio))
        device = generator.device if generator is not None else x.device
        noise = torch.rand(n, length, generator=generator, device=device).to(x.device)
        ranks = noise.argsort(dim=1).argsort(dim=1)
        return (ranks >= len_keep).to(x.dtype if x.is_floating_point() else torch.float32)

    # -- the network -------------------------------------------------------------------------------------

    def forward_encoder(self, imgs: Tensor, mask: Tensor) -> Tensor:
        """The encoder's (N, C, h, w) output with sparse semantics for ``mask``: zero at masked sites."""
        enc = self.encoder
        n, _, hh, ww = imgs.shape
        grid = (hh // self.patch_size, ww // self.patch_size)
        keep = 1.0 - mask.to(imgs.dtype)
        x = to_channels_last(imgs)
        for i in range(len(enc.stages)):
            scale = self.patch_size // (4 * 2**i)
            k = upsample_mask(keep, grid, scale)  # (N, H, W, 1)
            x = enc.downsample_layers[i](x)
            k = k.to(x.dtype)
            x = x * k.permute(0, 3, 1, 2)
            for blk in enc.stages[i]:
                if enc.grad_checkpointing and torch.is_grad_enabled():
                    x = checkpoint(_masked_block, blk, x, k, self.grn_stats, use_reentrant=False)
                else:
                    x = _masked_block(blk, x, k, self.grn_stats)
        return x

    def forward_decoder(self, x: Tensor, mask: Tensor) -> Tensor:
        """(N, C, h, w) encoder output -> (N, p*p*C, h, w) pixel predictions; masked sites get the token.

        The 1x1 ``proj`` and ``pred`` convs run as Linear layers on the channels-last map (their weights
        keep the official conv shapes): the same math, and oneDNN's GEMM instead of torch's slow path that
        a 1x1 conv takes on CPU. The result is a channels-last view, so ``forward`` flattens it for free.
        """
        n, _, h, w = x.shape
        y = F.linear(x.permute(0, 2, 3, 1), self.proj.weight.flatten(1), self.proj.bias)  # (N, h, w, D)
        m = mask.reshape(n, h, w, 1).to(y.dtype)
        y = torch.lerp(y, self.mask_token.reshape(1, 1, 1, -1).to(y.dtype).expand_as(y), m)
        y = self.decoder(y.permute(0, 3, 1, 2))
        y = F.linear(y.permute(0, 2, 3, 1), self.pred.weight.flatten(1), self.pred.bias)
        return y.permute(0, 3, 1, 2)

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error per patch, averaged over masked patches; targets normalised per patch."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = (pred.float() - target.float()).pow(2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum().clamp_min(1.0)

    def forward(
        self,
        imgs: Tensor,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
        mask: Tensor | None = None,
    ) -> FcmaeOutput:
        """Mask (a random one at ``mask_ratio``, default ``self.mask_ratio``, or the given ``mask``), encode,
        decode, and the loss."""
        p, (hh, ww) = self.patch_size, imgs.shape[-2:]
        if hh % p or ww % p:
            raise ValueError(f"image size {hh}x{ww} is not a multiple of the patch size {p}")
        shape = (imgs.shape[0], (hh // p) * (ww // p))
        if mask is None:
            mask = self.gen_random_mask(
                imgs, self.mask_ratio if mask_ratio is None else mask_ratio, generator
            )
        elif tuple(mask.shape) != shape:
            raise ValueError(f"mask must be (N, L) = {shape} for these images, not {tuple(mask.shape)}")
        mask = mask.to(device=imgs.device, dtype=torch.float32)
        feats = self.forward_encoder(imgs, mask)
        pred = self.forward_decoder(feats, mask)
        pred = pred.permute(0, 2, 3, 1).flatten(1, 2)  # (N, L, p*p*C), a view of the channels-last result
        return FcmaeOutput(self.forward_loss(imgs, pred, mask), pred, mask)


def create_fcmae(name: str, **kwargs: Any) -> FCMAE:
    """``create_fcmae("fcmae_convnextv2_atto", mask_ratio=0.6, ...)``: the FCMAE around that encoder."""
    if name not in FCMAE_VARIANTS:
        raise ValueError(f"unknown FCMAE model {name!r}; known: {', '.join(FCMAE_VARIANTS)}")
    return FCMAE(encoder=name.removeprefix("fcmae_"), **kwargs)
