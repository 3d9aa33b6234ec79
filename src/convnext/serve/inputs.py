"""Uploaded bytes -> uint8 RGB tensor, refusing what must not be decoded.

The server gets bytes, not files; ``convnext.data.images.load_image`` reads a path. ``decode_image_bytes``
makes the same decoder choice as ``load_image`` (torchvision.io for JPEG/PNG/GIF/WebP, PIL for the rest),
so that a photo gives the server the same pixels, hence the same probabilities, as ``convnext predict``;
the parity test in tests/test_serve.py holds the two together. ``check_image_header`` is the one place that
refuses an image from its header alone (a decompression bomb: a small file that declares a huge canvas or
thousands of frames); swap it for a data.images helper when one lands.
"""

from __future__ import annotations

import io
import warnings

import torch

from ..data.images import sniff_image

try:  # Pillow's own ceiling (~89 megapixels): the ecosystem's default for "too big to decode safely"
    from PIL import Image

    MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
except ImportError:  # pragma: no cover - pillow is a dependency
    MAX_PIXELS = 89_478_485

FORMATS = "JPEG, PNG, GIF, WebP, BMP, TIFF or PNM"


class BadImage(ValueError):
    """An upload the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_image_header(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[str, int, int]:
    """(format, width, height) from the header only; raises BadImage for a non-image, an unreadable
    header, or more than ``max_pixels`` pixels over all frames (checked before anything is decoded)."""
    if not data:
        raise BadImage("the upload is empty; send an image file")
    kind = sniff_image(data[:16])
    if kind is None:
        raise BadImage(f"the upload is not an image ({FORMATS} expected)", 415)
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # lazy: parses the header, decodes no pixel
                width, height = im.size
                frames = int(getattr(im, "n_frames", 1) or 1)  # GIF/WebP/TIFF: counted from frame headers
    except Image.DecompressionBombError:
        raise BadImage(f"the image has over {max_pixels:,} pixels; refused before decoding", 413) from None
    except Exception:
        raise BadImage(f"the {kind.upper()} image is truncated or corrupt (unreadable header)") from None
    if width * height * frames > max_pixels:
        what = f"{width}x{height} pixels" + (f" x {frames} frames" if frames > 1 else "")
        raise BadImage(
            f"the image is {what}, over the {max_pixels:,}-pixel limit; refused before decoding", 413
        )
    return kind, width, height


def decode_image_bytes(data: bytes) -> torch.Tensor:
    """uint8 (3, H, W) RGB, decoded exactly as ``convnext.data.images.load_image`` decodes a file."""
    from torchvision.io import ImageReadMode, decode_image

    kind = sniff_image(data[:16])
    if kind in ("jpeg", "png", "gif", "webp"):
        try:
            img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            return img[0] if img.ndim == 4 else img  # an animated GIF: its first frame
        except RuntimeError:
            pass  # PIL below: a second opinion on odd files, as load_image
    try:
        from PIL import Image
        from torchvision.transforms.v2.functional import pil_to_tensor

        with Image.open(io.BytesIO(data)) as im:
            return pil_to_tensor(im.convert("RGB"))
    except Exception:
        raise BadImage(f"the {(kind or 'image').upper()} image is truncated or corrupt") from None


def read_upload(data: bytes, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Header check, then decode: what the server runs (in a worker thread) for every upload."""
    check_image_header(data, max_pixels)
    return decode_image_bytes(data)
