"""Uploaded bytes -> uint8 RGB tensor, refusing what must not be decoded.

The decoding and the header check are ``convnext.data.images``' own (:func:`decode_image_bytes`, the bytes
entry point of ``load_image``), so a photo gives the server the same pixels, hence the same probabilities,
as ``convnext predict`` (the parity test in tests/test_serve.py holds them together). This module only
turns :class:`~convnext.data.images.ImageError` into an HTTP status and a sentence addressed to a client.
The pixel limit covers every frame of an animation: a small upload must not make the server parse
thousands of frames.
"""

from __future__ import annotations

import torch

from ..data.config import DEFAULT_MAX_PIXELS
from ..data.images import CORRUPT, EMPTY, NOT_IMAGE, TOO_LARGE, ImageError, decode_image_bytes, read_header

MAX_PIXELS = DEFAULT_MAX_PIXELS  # Pillow's ceiling (~89 megapixels): the ecosystem's "too big to decode"
FORMATS = "JPEG, PNG, GIF, WebP, BMP, TIFF or PNM"


class BadImage(ValueError):
    """An upload the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _bad(e: ImageError, max_pixels: int) -> BadImage:
    """The client's sentence and status for an image data.images refused."""
    kind = (e.header.kind if e.header else "image").upper()
    if e.cause == EMPTY:
        return BadImage("the upload is empty; send an image file")
    if e.cause == NOT_IMAGE:
        return BadImage(f"the upload is not an image ({FORMATS} expected)", 415)
    if e.cause == TOO_LARGE and e.header is not None:
        h = e.header
        what = f"{h.width}x{h.height} pixels" + (f" x {h.frames} frames" if h.frames > 1 else "")
        limit = f"over the {max_pixels:,}-pixel limit; refused before decoding"
        return BadImage(f"the image is {what}, {limit}", 413)
    if e.cause == CORRUPT and e.header is None:
        return BadImage(f"the {kind} image is truncated or corrupt (unreadable header)")
    return BadImage(f"the {kind} image is truncated or corrupt")


def check_image_header(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[str, int, int]:
    """(format, width, height) from the header only; raises BadImage for a non-image, an unreadable
    header, or more than ``max_pixels`` pixels over all frames (checked before anything is decoded)."""
    try:
        h = read_header(data, max_pixels=max_pixels, name="the upload", count_frames=True)
    except ImageError as e:
        raise _bad(e, max_pixels) from None
    return h.kind, h.width, h.height


def read_upload(data: bytes, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Header check, then decode, exactly as ``load_image`` reads a file: what the server runs (in a worker
    thread) for every upload."""
    try:
        return decode_image_bytes(data, max_pixels=max_pixels, name="the upload", count_frames=True)
    except ImageError as e:
        raise _bad(e, max_pixels) from None
