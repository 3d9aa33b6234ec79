"""Reading images: libjpeg-turbo/libpng via torchvision.io into uint8 RGB tensors, PIL only as a fallback.

Bad files are handled in two places (documented in the README):
- scan time (cheap, every file once): zero-byte files and files whose first bytes are not a known image
  signature (a .txt, a .DS_Store, an HTML error page saved as .jpg) are skipped and counted; one warning
  names them. A PNG named .jpg passes: the signature, not the extension, decides.
- load time (the full decode): a truncated or corrupt image that passed the header check is replaced by
  the next good sample of the dataset (deterministic, so seeded runs stay reproducible), counted, and
  named in one warning per file; the epoch never dies because of one file. ``strict`` makes both fatal.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image

from ..errors import UserError

# torchvision 0.29 deprecates its decoders in favour of TorchCodec (not a dependency here); libjpeg-turbo via
# torchvision.io is still the fastest decoder we have, so keep using it and keep the logs clean.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")

IMG_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".gif",
    ".webp",
    ".bmp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
    ".pbm",
)


def sniff_image(head: bytes) -> str | None:
    """The image format from the first bytes of a file, or None when it is not an image we can read."""
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:1] == b"P" and head[1:2] in b"123456":
        return "pnm"
    return None


def check_file(path: str | os.PathLike, *, headers: bool = True) -> str | None:
    """Why ``path`` is not a usable image ("empty file", "not an image"), or None when it looks fine."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        if headers:
            with open(path, "rb") as f:
                if sniff_image(f.read(16)) is None:
                    return "not an image"
        elif not str(path).lower().endswith(IMG_EXTENSIONS):
            return "not an image"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    return None


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """uint8 (3, H, W) RGB. Grayscale, CMYK, palette and alpha images become RGB (the decoder converts).

    torchvision.io decodes JPEG/PNG/GIF/WEBP (libjpeg-turbo is ~2x faster than PIL); BMP, TIFF and PNM go
    through PIL. Raises ValueError naming the file when it cannot be decoded.
    """
    path = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read image {path}: {e.strerror or e}") from None
    if not data:
        raise ValueError(f"image {path} is an empty file")
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    kind = sniff_image(data[:16])
    if kind in ("jpeg", "png", "gif", "webp"):
        try:
            img = decode_image(buf, mode=ImageReadMode.RGB)
            if img.ndim == 4:  # an animated GIF: its first frame
                img = img[0]
            return img
        except RuntimeError as e:
            err: Exception = e
    else:
        err = ValueError("unknown format")
    try:  # PIL: formats torchvision.io does not decode, and a second opinion on odd files
        import io

        from PIL import Image
        from torchvision.transforms.v2.functional import pil_to_tensor

        with Image.open(io.BytesIO(data)) as im:
            return pil_to_tensor(im.convert("RGB"))
    except Exception:
        msg = str(err).splitlines()[-1] if str(err) else type(err).__name__
        raise ValueError(f"cannot decode image {path} ({'truncated or corrupt' if kind else msg})") from None


def strict_error(path: str | Path, reason: str) -> UserError:
    return UserError(f"image {path} is unusable ({reason}); remove it or set data.strict=false to skip it")
