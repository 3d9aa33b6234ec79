"""Reading images: libjpeg-turbo/libpng via torchvision.io into uint8 RGB tensors, PIL for everything else.

Bad files are handled in two places (documented in the README):
- scan time (cheap, every file once): zero-byte files, files whose first bytes are not a known image
  signature (a .txt, a .DS_Store, an HTML error page saved as .jpg) and PNG/GIF/BMP files whose header
  declares more pixels than the limit are left out and named. A PNG named .jpg passes: the signature, not
  the extension, decides.
- load time (the full decode): the header is read first (PIL reads only the header on open) and an image
  above the pixel limit is refused before a byte of it is decoded; a truncated or corrupt image raises
  :class:`ImageError`. What happens then is the caller's choice (training substitutes another sample,
  evaluation drops it, predict prints it); ``data.strict`` makes every bad file fatal.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image

from ..errors import UserError
from .config import DEFAULT_MAX_PIXELS

# torchvision 0.29 deprecates its decoders in favour of TorchCodec (not a dependency here); libjpeg-turbo via
# torchvision.io is still the fastest decoder we have. Its DeprecationWarning is hidden by Python's default
# filters; the command line also filters it for its own process (cli/main.py). No global filter here: a
# library user's warning settings are theirs.

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


# ImageError.cause: why an image cannot be used, as a server maps it to a status (400, 415, 413, 400, 400)
EMPTY = "empty"
NOT_IMAGE = "not an image"
TOO_LARGE = "too large"
CORRUPT = "corrupt"
UNREADABLE = "unreadable"


class ImageError(ValueError):
    """An image that cannot be used. ``why`` is the short cause ("truncated or corrupt", "empty file", ...);
    str() is one sentence naming the file. ``cause`` is one of EMPTY, NOT_IMAGE, TOO_LARGE, CORRUPT,
    UNREADABLE (what a server maps to an HTTP status); ``header`` what was read before it failed, if any."""

    def __init__(
        self, path: str | os.PathLike, why: str, cause: str = CORRUPT, header: ImageHeader | None = None
    ) -> None:
        self.path, self.why, self.cause, self.header = str(path), why, cause, header
        super().__init__(f"cannot read image {path} ({why})")


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, before a pixel is decoded."""

    kind: str  # sniff_image's name: jpeg, png, gif, webp, bmp, tiff, pnm
    width: int
    height: int
    frames: int = 1  # counted only when asked (count_frames=True); else 1
    animated: bool = False  # an animated PNG/WebP (decoded by PIL: torchvision.io would decode every frame)


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


def _header_size(kind: str | None, head: bytes) -> tuple[int, int] | None:
    """(width, height) from the fixed-offset headers of PNG (IHDR), GIF and BMP; None for the others
    (JPEG, WebP, TIFF: their size is further in; the load-time check covers them)."""
    try:
        if kind == "png" and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if kind == "gif":
            return struct.unpack("<HH", head[6:10])
        if kind == "bmp" and struct.unpack("<I", head[14:18])[0] >= 40:  # BITMAPINFOHEADER or later
            w, h = struct.unpack("<ii", head[18:26])
            return abs(w), abs(h)
    except struct.error:  # a file shorter than its header: the decode will say so
        return None
    return None


def pixel_limit_why(width: int, height: int, max_pixels: int, frames: int = 1) -> str | None:
    """The cause when width x height (x frames) is above ``max_pixels`` (0: no limit), else None."""
    n = width * height * frames
    if not max_pixels or n <= max_pixels:
        return None
    size = f"{width}x{height}" + (f" x {frames} frames" if frames > 1 else "")
    return (
        f"{size} = {n / 1e6:.1f} Mpx, above the limit of {max_pixels:,} pixels "
        f"(a decompression bomb?); raise it with --max-pixels N or data.max_pixels=N, 0 for no limit"
    )


_NOT_REGULAR = (
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def not_regular_why(mode: int) -> str:
    """The cause for a path that is not a regular file: reading a FIFO blocks until a writer comes, a
    character device such as /dev/zero or /dev/urandom never ends, so neither is opened for reading."""
    what = next((name for test, name in _NOT_REGULAR if test(mode)), "a special file")
    return f"not a regular file: {what}"


def check_file(
    path: str | os.PathLike, *, headers: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS
) -> str | None:
    """Why ``path`` is not a usable image ("empty file", "not an image", "... above the limit ...", "not a
    regular file: a named pipe"), or None when it looks fine. Reads at most 32 bytes, and none from
    anything but a regular file (a FIFO would block, /dev/zero never ends)."""
    try:
        st = os.stat(path)  # follows links: a link to /dev/zero is a device
        if not stat.S_ISREG(st.st_mode):
            return not_regular_why(st.st_mode)
        if st.st_size == 0:
            return "empty file"
        if headers:
            with open(path, "rb") as f:
                head = f.read(32)
            kind = sniff_image(head)
            if kind is None:
                return "not an image"
            wh = _header_size(kind, head)
            if wh is not None:
                return pixel_limit_why(*wh, max_pixels)
        elif not str(path).lower().endswith(IMG_EXTENSIONS):
            return "not an image"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    return None


# ------------------------------------------------------------------------------------------------ decoding
_pil_lock = threading.Lock()
_pil_users = 0
_pil_saved: int | None = None


@contextmanager
def _our_pixel_limit() -> Iterator[None]:
    """PIL enforces its own global limit (``Image.MAX_IMAGE_PIXELS``: a warning above it, an error above
    twice it) inside ``Image.open`` and some decoders, before we see the size; ours (``max_pixels``) is
    checked from the header instead, so a user who raises it is obeyed. PIL's is lifted while one of our
    reads runs (reference-counted, so concurrent readers restore it once)."""
    from PIL import Image

    global _pil_users, _pil_saved
    with _pil_lock:
        if _pil_users == 0:
            _pil_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _pil_users += 1
    try:
        yield
    finally:
        with _pil_lock:
            _pil_users -= 1
            if _pil_users == 0:
                Image.MAX_IMAGE_PIXELS = _pil_saved


def _uint8_rgb(img: torch.Tensor) -> torch.Tensor:
    """torchvision.io gives uint16 for 16-bit PNGs: scale (x >> 8, what libpng's strip-16 and PIL's 16-bit
    RGB reader do), never truncate; an animated image's first frame."""
    if img.ndim == 4:
        img = img[0]
    if img.dtype == torch.uint16:
        from torchvision.transforms.v2.functional import to_dtype

        img = to_dtype(img, torch.uint8, scale=True)
    return img


def _pil_rgb(im) -> torch.Tensor:  # a PIL.Image.Image, imported lazily
    """uint8 (3, H, W) RGB from any PIL mode, the current (first) frame.

    PIL's ``convert("RGB")`` clips 16/32-bit integer and float images to 0..255 (a 16-bit PNG turns almost
    white), so those are scaled here instead: I;16* and I as 16-bit data (>> 8, the same pixels as the
    torchvision.io path), F as intensities in [0, 1]. Alpha is dropped, not composited (the colour under a
    transparent pixel is kept), as ``convert("RGB")`` and libpng do; palette images with transparency go
    through RGBA so PIL does not warn. CMYK uses PIL's conversion (Adobe-inverted JPEGs included).
    """
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im)
        if mode == "I":
            a = np.clip(a, 0, 65535)
        g = (a.astype(np.uint16) >> 8).astype(np.uint8)
        arr = np.repeat(g[..., None], 3, axis=2)
    elif mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0)
        g = np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
        arr = np.repeat(g[..., None], 3, axis=2)
    else:
        if mode in ("P", "PA") and (mode == "PA" or "transparency" in im.info):
            im = im.convert("RGBA")
        arr = np.array(im if im.mode == "RGB" else im.convert("RGB"))  # a copy: torch wants it writable
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _open_checked(data: bytes, name: str, max_pixels: int, count_frames: bool) -> tuple[ImageHeader, Any]:
    """The header read and checked, and the lazily opened PIL image (nothing decoded yet; the caller closes
    it). Raises :class:`ImageError`: empty, not an image, unreadable header, above ``max_pixels``."""
    from PIL import Image

    if not data:
        raise ImageError(name, "empty file", EMPTY)
    kind = sniff_image(data[:16])
    if kind is None:
        raise ImageError(name, "not an image", NOT_IMAGE)
    with _our_pixel_limit():  # PIL's global lifted only around PIL's own calls
        try:
            im = Image.open(io.BytesIO(data))  # lazy: parses the header, decodes no pixel
            animated = kind in ("png", "webp") and getattr(im, "is_animated", False)
            frames = int(getattr(im, "n_frames", 1) or 1) if count_frames else 1  # from frame headers
        except Exception:
            raise ImageError(name, "truncated or corrupt", CORRUPT) from None
    header = ImageHeader(kind, *im.size, frames=frames, animated=animated)
    why = pixel_limit_why(header.width, header.height, max_pixels, frames)
    if why is not None:
        im.close()
        raise ImageError(name, why, TOO_LARGE, header)
    return header, im


def read_header(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "<bytes>", count_frames: bool = False
) -> ImageHeader:
    """Format and size from the header alone, refusing what must not be decoded (see :func:`load_image`).

    ``count_frames``: the limit covers every frame of an animation (a server that must not be made to parse
    thousands of frames); otherwise only the first frame, the one that is decoded."""
    header, im = _open_checked(data, name, max_pixels, count_frames)
    im.close()
    return header


def decode_image_bytes(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "<bytes>", count_frames: bool = False
) -> torch.Tensor:
    """:func:`load_image` for bytes already in memory (an upload); ``name`` is what errors call them."""
    header, im = _open_checked(data, name, max_pixels, count_frames)
    with im:
        if header.kind in ("jpeg", "png", "webp") and not header.animated:
            try:
                buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                return _uint8_rgb(decode_image(buf, mode=ImageReadMode.RGB))
            except RuntimeError:
                pass  # PIL below: a second opinion on odd files
        try:
            with _our_pixel_limit():
                return _pil_rgb(im)
        except Exception:
            raise ImageError(name, "truncated or corrupt", CORRUPT, header) from None


def load_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """uint8 (3, H, W) RGB, whatever the file holds: 8/16-bit grey or RGB, grey+alpha, RGBA, palette (with
    or without transparency), CMYK, 16/32-bit integer or float TIFF, the first frame of an animated
    GIF/WebP/PNG.

    The header is read first (PIL's ``Image.open`` parses only the header) and an image above
    ``max_pixels`` (0: no limit) is refused before decoding. JPEG, PNG and still WebP then decode with
    torchvision.io (libjpeg-turbo, faster than PIL: BENCHMARKS.md), the rest with PIL. Raises
    :class:`ImageError` (a ValueError) naming the file when it cannot be used.
    """
    path = str(path)
    try:
        # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer; fstat on what was
        # opened (not a stat before the open) decides, so the file cannot be swapped in between
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise ImageError(path, not_regular_why(mode), UNREADABLE)
            data = f.read()
    except OSError as e:
        raise ImageError(path, f"unreadable: {e.strerror or e}", UNREADABLE) from None
    return decode_image_bytes(data, max_pixels=max_pixels, name=path)


def strict_error(path: str | Path, reason: str) -> UserError:
    return UserError(f"image {path} is unusable ({reason}); remove it or set data.strict=false to skip it")


# ---------------------------------------------------------------------------------------------- listing
def dir_key(path: str | os.PathLike) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


FileKey = tuple[int, int, int]  # (st_dev, st_ino, st_nlink) of what a path leads to


def walk_files(
    top: str | os.PathLike, seen_dirs: set[tuple[int, int]]
) -> Iterator[tuple[str, str, bool, FileKey | None]]:
    """Every non-hidden file under ``top`` as (path, real path, is a symlink, key), following directory
    links but entering each real directory once: a link loop (``loop -> ..``) or a second link to a folder
    already walked (its (st_dev, st_ino) in ``seen_dirs``, which this updates) adds nothing. ``top`` itself
    is walked even when it is in ``seen_dirs``. Sorted, files of a folder before its sub-folders (the order
    of ``os.walk``). Broken links, FIFOs, devices and links to them are listed too, so that they can be
    reported (:func:`check_file` names them without opening them). ``key`` is (st_dev, st_ino, st_nlink)
    of the file a path leads to (None for a broken link): :func:`unique_files` counts each file once by it,
    whatever the number of hard or symbolic links to it.

    Hand-written because ``os.walk(followlinks=True)`` recurses through loops until the path is too long.
    """
    top = os.fspath(top)
    seen_dirs.add(dir_key(top))
    stack = [(top, os.path.realpath(top))]
    while stack:
        folder, real = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:  # unreadable folder: what os.walk does (skip it)
            continue
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():
                    st = e.stat()
                    key = (st.st_dev, st.st_ino)
                    if key not in seen_dirs:
                        seen_dirs.add(key)
                        sub_real = os.path.realpath(e.path) if e.is_symlink() else os.path.join(real, e.name)
                        subdirs.append((e.path, sub_real))
                    continue
                link = e.is_symlink()
                try:
                    st = e.stat()  # the target's (one lstat for a plain file; cached by the DirEntry)
                    file_key: FileKey | None = (st.st_dev, st.st_ino, st.st_nlink)
                except OSError:  # a broken link, a link loop: listed, to be named
                    if not link:
                        raise
                    file_key = None
                yield (
                    e.path,
                    (os.path.realpath(e.path) if link else os.path.join(real, e.name)),
                    link,
                    file_key,
                )
            except OSError:
                continue
        stack.extend(reversed(subdirs))


def unique_files(entries: list[tuple[str, str, bool, FileKey | None]]) -> list[int]:
    """Indices of ``entries`` (from :func:`walk_files`) to keep so that each file counts once, however many
    hard or symbolic links lead to it: by its (st_dev, st_ino), the file itself before a symlink to it,
    else the first in walk order. Broken links are all kept (to be reported).

    Nothing to compare in the common case (no symlinks, no file with a second hard link); otherwise numpy
    arrays, not a set of tuples: a folder made by ``convnext prepare`` is hard links throughout, and 1.28M
    Python tuples would cost ~200 MB where the arrays take 40 MB."""
    n = len(entries)
    if not any(link or (key is not None and key[2] > 1) for _, _, link, key in entries):
        return list(range(n))
    known = [i for i, e in enumerate(entries) if e[3] is not None]
    dev = np.fromiter((entries[i][3][0] for i in known), dtype=np.uint64, count=len(known))  # type: ignore[index]
    ino = np.fromiter((entries[i][3][1] for i in known), dtype=np.uint64, count=len(known))  # type: ignore[index]
    link = np.fromiter((entries[i][2] for i in known), dtype=np.uint8, count=len(known))
    pos = np.asarray(known, dtype=np.int64)
    order = np.lexsort((pos, link, ino, dev))  # by file, then the file itself before links, then walk order
    first = np.ones(len(order), dtype=bool)
    first[1:] = (dev[order][1:] != dev[order][:-1]) | (ino[order][1:] != ino[order][:-1])
    keep = np.zeros(n, dtype=bool)
    keep[pos[order[first]]] = True
    keep[[i for i, e in enumerate(entries) if e[3] is None]] = True
    return np.flatnonzero(keep).tolist()
