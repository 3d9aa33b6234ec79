"""Where weights come from: a registry tag, a URL (torch.hub's cache), a file, an HF folder, a Hub repo
(``hf-hub:ORG/NAME[@REVISION]``, huggingface_hub's cache: ``hf_hub.py``) or a run folder.

Downloads use torch.hub's cache (``$TORCH_HOME/hub/checkpoints``), so a file fetched once is never fetched
again and works offline.
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch

from ..errors import UserError
from .registry import WeightEntry, find_file, find_tag, list_tags

DOWNLOAD_TIMEOUT_S = 60  # per connection attempt / read, not for the whole download
RUN_CHECKPOINTS = ("best.pth", "last.pth")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".tar")


def fetch(url: str, *, progress: bool = True) -> Path:
    """The local copy of ``url`` in torch.hub's cache, downloading it (with a progress bar) only if absent.

    torch.hub's own ``load_state_dict_from_url`` would also ``torch.load`` the file, and its errors are
    tracebacks; we want the file (it may be safetensors) and one sentence when the network is missing.
    """
    name = Path(urlparse(url).path).name
    if not name:
        raise UserError(f"cannot tell a file name from the URL {url}; download it by hand and pass the file")
    dst = Path(torch.hub.get_dir()) / "checkpoints" / name
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    m = torch.hub.HASH_REGEX.search(name)  # "name-<sha256 prefix>.ext": torch.hub's check_hash convention
    hash_prefix = m.group(1) if m and m.group(1) else None
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # torch.hub has no timeout: a dropped network would hang
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix, progress=progress)
    except (URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(
            f"could not download {url} ({reason}); download it by hand and pass the file's path instead "
            f"(or put it in {dst.parent})"
        ) from None
    except RuntimeError as e:
        if "hash" in str(e):
            raise UserError(f"the file downloaded from {url} is corrupt ({e}); try again") from None
        raise
    finally:
        socket.setdefaulttimeout(previous)
    return dst


def is_run_dir(path: Path) -> bool:
    """A training run folder (``convnext train``'s run.dir): config.yaml or checkpoints/ inside."""
    return path.is_dir() and ((path / "config.yaml").is_file() or (path / "checkpoints").is_dir())


def run_checkpoint(run_dir: Path) -> Path:
    """checkpoints/best.pth (the best validation top-1), else checkpoints/last.pth."""
    for name in RUN_CHECKPOINTS:
        p = run_dir / "checkpoints" / name
        if p.is_file():
            return p
    raise UserError(f"run folder {run_dir} has no checkpoints/best.pth or checkpoints/last.pth yet")


def resolve(src: str | Path) -> tuple[Path, WeightEntry | None]:
    """The local file (or HF / run folder) behind a path, URL, Hub repo or registry tag, and the registry
    entry of a tag or of a release's URL."""
    s = str(src)
    if s.startswith("hf-hub:"):  # a Hub repo becomes a folder in huggingface_hub's cache
        from .hf_hub import download

        return download(s), None
    entry = find_tag(s)
    if entry is not None and entry.url.startswith("hf-hub:"):  # timm's Hub releases (in12k, CLIP, DINOv3)
        from .hf_hub import download

        return download(entry.url), entry
    if entry is not None:
        return fetch(entry.url), entry
    if s.startswith(("http://", "https://")):
        entry = find_file(s)
        return fetch(s), entry if entry is not None and entry.url == s else None
    path = Path(s).expanduser()
    if path.exists():
        return path, None
    if "/" not in s and "\\" not in s and Path(s).suffix not in CHECKPOINT_SUFFIXES:
        arch = s.partition(".")[0]
        known = list_tags(arch) or list_tags()[:6]
        raise UserError(f"{s!r} is neither a file nor a known weights tag; tags: {', '.join(known)}")
    raise UserError(f"checkpoint {s} does not exist")
