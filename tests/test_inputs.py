"""Messy real-world inputs: every kind of image a folder holds, broken files, decompression bombs and symlink
loops, through the decoder, the datasets and the real CLI (train, evaluate, predict): every readable file
counted exactly once, every unreadable one named and counted in no metric."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from convnext.cli.main import main
from convnext.data.images import (
    TOO_LARGE,
    ImageError,
    _pil_rgb,
    check_file,
    decode_image_bytes,
    load_image,
    read_header,
)

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "convnext" / "configs"
H, W = 20, 24


# ------------------------------------------------------------------------------------------ image makers
def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG of ``arr`` (H, W[, C]) uint16, C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA. Written by hand:
    PIL cannot write 16-bit RGB."""
    h, w = arr.shape[:2]
    c = 1 if arr.ndim == 2 else arr.shape[2]
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = arr.reshape(h, w * c).astype(">u2")
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG whose header declares width x height grey pixels (400 Mpx: 1.2 GB as RGB) in ~100 bytes: the
    pixel limit must refuse it from the header, before any decode."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * (width + 1) * 4)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _rgb(seed: int) -> np.ndarray:
    return _rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _save(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _frames(seed: int, n: int = 3) -> list[Image.Image]:
    return [Image.fromarray(_rgb(seed + k)) for k in range(n)]


def image_kinds() -> dict[str, tuple[bytes, np.ndarray]]:
    """name -> (file bytes, the uint8 (H, W, 3) RGB the decoder must give). Every kind of image the issue
    lists: 16-bit grey/RGB, LA, RGBA, palette (with transparency), CMYK, WebP, animated GIF/WebP first
    frame, plus 16-bit/32-bit/float TIFF, BMP, grey JPEG and a PNG named .jpg."""
    out: dict[str, tuple[bytes, np.ndarray]] = {}
    g16 = _rng(1).integers(0, 65536, (H, W), dtype=np.uint16)
    out["grey16.png"] = (png16(g16), np.repeat((g16 >> 8).astype(np.uint8)[..., None], 3, 2))
    c16 = _rng(2).integers(0, 65536, (H, W, 3), dtype=np.uint16)
    out["rgb16.png"] = (png16(c16), (c16 >> 8).astype(np.uint8))
    la16 = _rng(3).integers(0, 65536, (H, W, 2), dtype=np.uint16)
    out["greyalpha16.png"] = (png16(la16), np.repeat((la16[..., :1] >> 8).astype(np.uint8), 3, 2))
    rgba16 = _rng(4).integers(0, 65536, (H, W, 4), dtype=np.uint16)
    out["rgba16.png"] = (png16(rgba16), (rgba16[..., :3] >> 8).astype(np.uint8))
    base = Image.fromarray(_rgb(5))
    la = base.convert("LA")
    out["greyalpha.png"] = (_save(la, "PNG"), np.array(la.convert("RGB")))
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.fromarray(_rng(6).integers(0, 256, (H, W), dtype=np.uint8)))
    out["rgba.png"] = (_save(rgba, "PNG"), np.asarray(base))  # alpha dropped, colour kept
    pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    out["palette_trns.png"] = (_save(pal, "PNG", transparency=0), np.array(pal.convert("RGB")))
    out["palette.gif"] = (_save(pal, "GIF"), np.array(pal.convert("RGB")))
    cmyk = base.convert("CMYK")
    data = _save(cmyk, "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as im:
        out["cmyk.jpg"] = (data, np.array(im.convert("RGB")))
    grey = base.convert("L")
    data = _save(grey, "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as im:
        out["grey.jpg"] = (data, np.array(im.convert("RGB")))
    out["lossless.webp"] = (_save(base, "WEBP", lossless=True), np.asarray(base))
    frames = _frames(7)
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:])
    with Image.open(io.BytesIO(data)) as im:
        out["animated.gif"] = (data, np.array(im.convert("RGB")))  # frame 0
    frames = _frames(11)
    out["animated.webp"] = (
        _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True),
        np.asarray(frames[0]),
    )
    out["grey16.tiff"] = (_save(Image.fromarray(g16), "TIFF"), out["grey16.png"][1])
    i32 = g16.astype(np.int32)
    out["int32.tiff"] = (_save(Image.fromarray(i32), "TIFF"), out["grey16.png"][1])
    f = _rng(8).random((H, W)).astype(np.float32)
    fexp = np.round(f * 255).astype(np.uint8)
    out["float.tiff"] = (_save(Image.fromarray(f), "TIFF"), np.repeat(fexp[..., None], 3, 2))
    out["old.bmp"] = (_save(base, "BMP"), np.asarray(base))
    out["png_named.jpg"] = (_save(base, "PNG"), np.asarray(base))
    return out


def broken_files() -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, the cause the error must give)."""
    good = _save(Image.fromarray(_rgb(9)), "JPEG")
    return {
        "truncated.jpg": (good[: len(good) // 2], "truncated or corrupt"),
        "empty.jpg": (b"", "empty file"),
        "error_page.jpg": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n", "not an image"),
        "bomb.png": (bomb_png(), "above the limit of 89,478,485 pixels"),
    }


# -------------------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("name", sorted(image_kinds()))
def test_every_kind_decodes_to_uint8_rgb(name: str, tmp_path: Path) -> None:
    data, want = image_kinds()[name]
    path = tmp_path / name
    path.write_bytes(data)
    img = load_image(path)
    assert img.dtype == torch.uint8 and img.shape == (3, H, W), (img.dtype, img.shape)
    got = img.permute(1, 2, 0).numpy()
    assert np.array_equal(got, want), int(np.abs(got.astype(int) - want.astype(int)).max())
    with Image.open(path) as im:  # the PIL path gives the same pixels as the torchvision.io path
        assert torch.equal(_pil_rgb(im), img)
    assert torch.equal(decode_image_bytes(data, name=name), img)  # bytes in memory: the same decoder


def test_16bit_images_batch_like_any_other(tmp_path: Path) -> None:
    """The original crash: a uint16 tensor from a 16-bit PNG next to uint8 ones in one batch."""
    from torch.utils.data import default_collate

    kinds = image_kinds()
    imgs = []
    for name in ("grey16.png", "rgb16.png", "rgba.png", "cmyk.jpg"):
        (tmp_path / name).write_bytes(kinds[name][0])
        imgs.append((load_image(tmp_path / name), 0))
    batch, _ = default_collate(imgs)
    assert batch.dtype == torch.uint8 and batch.shape == (4, 3, H, W)


@pytest.mark.parametrize("name", sorted(broken_files()))
def test_broken_files_raise_one_named_cause(name: str, tmp_path: Path) -> None:
    data, why = broken_files()[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ImageError) as e:
        load_image(path)
    assert why in e.value.why and str(path) in str(e.value) and "\n" not in str(e.value)


def test_pixel_limit_is_read_from_the_header_and_can_be_raised(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())
    # scan time: the PNG header is enough (32 bytes read)
    assert "20000x20000 = 400.0 Mpx, above the limit of 89,478,485 pixels" in check_file(bomb)
    assert "data.max_pixels" in check_file(bomb) and "--max-pixels" in check_file(bomb)
    assert check_file(bomb, max_pixels=0) is None
    # load time, for JPEG too (its size is not at a fixed offset: PIL reads the header)
    jpg = tmp_path / "small.jpg"
    jpg.write_bytes(_save(Image.fromarray(_rgb(0)), "JPEG"))
    assert check_file(jpg, max_pixels=100) is None
    with pytest.raises(ImageError, match=r"24x20 = 0.0 Mpx, above the limit of 100 pixels"):
        load_image(jpg, max_pixels=100)
    assert load_image(jpg, max_pixels=H * W).shape == (3, H, W)


def test_header_check_on_bytes_counts_frames_when_asked() -> None:
    """read_header: format and size without decoding; the limit is per decoded frame, or, with
    count_frames (what convnext serve asks), over every frame of an animation."""
    data = image_kinds()["animated.gif"][0]  # 3 frames of 24x20
    h = read_header(data, max_pixels=H * W)
    assert (h.kind, h.width, h.height, h.frames) == ("gif", W, H, 1)
    assert read_header(data, max_pixels=3 * H * W, count_frames=True).frames == 3
    with pytest.raises(ImageError, match=r"24x20 x 3 frames = 0.0 Mpx, above the limit of 1,000") as e:
        decode_image_bytes(data, max_pixels=1000, name="upload.gif", count_frames=True)
    assert e.value.cause == TOO_LARGE and e.value.header.frames == 3 and "upload.gif" in str(e.value)
    assert decode_image_bytes(data, max_pixels=1000).shape == (3, H, W)  # only the first frame is decoded


def test_raised_limit_overrides_pils_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PIL refuses above 2 x Image.MAX_IMAGE_PIXELS by itself; a user who raises data.max_pixels is obeyed,
    and PIL's global is restored afterwards."""
    kinds = image_kinds()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    for name in ("old.bmp", "animated.gif", "rgb16.png"):  # PIL path, PIL path, torchvision path
        data, want = kinds[name]
        (tmp_path / name).write_bytes(data)
        assert np.array_equal(load_image(tmp_path / name, max_pixels=0).permute(1, 2, 0).numpy(), want)
        with pytest.raises(ImageError, match="above the limit of 200 pixels"):
            load_image(tmp_path / name, max_pixels=200)
    assert Image.MAX_IMAGE_PIXELS == 100


# ------------------------------------------------------------------------------------------ the real CLI
def _messy_folder(
    root: Path, classes: tuple[str, ...] = ("a", "b")
) -> tuple[dict[str, list[str]], list[str]]:
    """root/<class>/ with every kind of image (split between the classes), every broken file, a duplicate
    symlink and a directory symlink loop. Returns the readable files per class and the broken files."""
    kinds, broken = image_kinds(), broken_files()
    good: dict[str, list[str]] = {c: [] for c in classes}
    for k, (name, (data, _)) in enumerate(sorted(kinds.items())):
        c = classes[k % len(classes)]
        (root / c).mkdir(parents=True, exist_ok=True)
        (root / c / name).write_bytes(data)
        good[c].append(str(root / c / name))
    bad = []
    for name, (data, _) in broken.items():
        (root / classes[0] / name).write_bytes(data)
        bad.append(str(root / classes[0] / name))
    os.symlink("..", root / classes[0] / "loop")  # a -> root: every image again, 40 times over
    os.symlink(Path(good[classes[1]][0]).name, root / classes[1] / "same_file_again.png")
    return good, bad


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, list, str]:
    """`convnext train` (2 workers, 2 epochs) on a folder of every kind of image and every broken file."""
    tmp = tmp_path_factory.mktemp("inputs")
    data = tmp / "data"
    good, bad = _messy_folder(data / "train")
    good_val, bad_val = _messy_folder(data / "val")
    run = tmp / "run"
    import subprocess
    import sys

    recipe = str(CONFIGS / "quickstart_digits.yaml")
    argv = [
        sys.executable, "-m", "convnext.cli.main", "train", "--config", recipe,
        f"run.dir={run}", "data.dataset=imagefolder", f"data.root={data}", "data.class_list=folders",
        "epochs=2", "train.batch_size=4", "train.eval_batch_size=5", "data.workers=2",
        "data.persistent_workers=false", "train.progress=false", "run.export_samples=0", "train.log_every=1",
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, data, good_val, bad_val, proc.stderr


def test_train_on_messy_folder_substitutes_and_says_it_once(trained_run) -> None:
    run, data, _, _, err = trained_run
    # scan time: the empty file, the HTML page and the bomb PNG are left out and named once per split
    skipped = [ln for ln in err.splitlines() if "skipped 3 unusable file(s)" in ln]
    assert len(skipped) == 2, err[-3000:]
    for name in ("empty.jpg (empty file)", "error_page.jpg (not an image)", "bomb.png (20000x20000"):
        assert all(name in ln for ln in skipped), (name, skipped)
    # load time: the truncated JPEG is replaced in training (2 epochs, 2 fresh worker processes per
    # epoch) and dropped in validation: one line each, not one per worker or epoch
    substituted = [ln for ln in err.splitlines() if "truncated.jpg" in ln and "another image" in ln]
    assert len(substituted) == 1, err[-3000:]
    left_out = [ln for ln in err.splitlines() if "left out 1 unreadable file" in ln]
    assert len(left_out) == 1 and "val/a/truncated.jpg (truncated or corrupt)" in left_out[0], err[-3000:]
    metrics = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    assert [m["epoch"] for m in metrics if "val_top1" in m][-1] == 2


def test_evaluate_counts_every_readable_file_once(trained_run, tmp_path: Path, capsys) -> None:
    run, data, good, bad, _ = trained_run
    js, csv_out = tmp_path / "m.json", tmp_path / "per_class.csv"
    argv = ["evaluate", "--weights", str(run), "--data", str(data), "--workers", "2", "--batch-size", "3",
            "--json", str(js), "--per-class", str(csv_out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    m = json.loads(js.read_text())
    n_good = sum(len(v) for v in good.values())
    assert m["n"] == n_good  # the loop and the duplicate link add nothing; nothing substituted
    assert m["dropped"] == len(bad) == 4
    assert sorted(d["path"] for d in m["dropped_files"]) == sorted(bad)
    causes = {Path(d["path"]).name: d["reason"] for d in m["dropped_files"]}
    for name, (_, why) in broken_files().items():
        assert why in causes[name], (name, causes[name])
    rows = (csv_out.read_text().splitlines())[1:]
    assert {r.split(",")[1]: int(r.split(",")[2]) for r in rows} == {c: len(v) for c, v in good.items()}
    assert f"{n_good} images, 2 of 2 classes; 4 unreadable file(s) dropped" in out
    for p in bad:
        assert re.search(rf"^  {re.escape(p)} \(", out, re.M), out
    # a limit below every image's size: each one is dropped and named, none counted
    argv = argv[:9] + ["--json", str(js), "--no-progress", "--max-pixels", str(H * W - 1)]
    assert main(argv) == 0
    m = json.loads(js.read_text())
    assert m["n"] == 0 and m["dropped"] == n_good + len(bad)
    assert sum("--max-pixels" in d["reason"] for d in m["dropped_files"]) == n_good + 1  # + the bomb
    capsys.readouterr()


def test_predict_names_each_file_once(trained_run, capsys) -> None:
    run, data, good, bad, _ = trained_run
    rc = main(["predict", str(data / "val"), str(data / "val" / "b"), "--weights", str(run), "--json"])
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert rc == 1
    paths = [d["path"] for d in lines]
    assert len(paths) == len(set(paths))  # the loop, the duplicate link and the repeated folder add nothing
    assert sorted(d["path"] for d in lines if "top" in d) == sorted(p for v in good.values() for p in v)
    errors = {Path(d["path"]).name: d["error"] for d in lines if "error" in d}
    assert sorted(errors) == sorted(Path(p).name for p in bad)
    assert "above the limit of 89,478,485 pixels" in errors["bomb.png"]
    assert "--max-pixels" in errors["bomb.png"]
    # a lower limit refuses the ordinary images too, one line each, the others go on
    rc = main(["predict", *good["a"][:2], "--weights", str(run), "--max-pixels", "100"])
    out = capsys.readouterr().out.splitlines()
    why = (
        f"{W}x{H} = 0.0 Mpx, above the limit of 100 pixels (a decompression bomb?); raise it with "
        "--max-pixels N or data.max_pixels=N, 0 for no limit"
    )
    assert rc == 1 and out == [f"{p}: error: cannot read image ({why})" for p in good["a"][:2]]


# ------------------------------------------------------------------- FIFOs, devices, hard links
def _within(seconds: float, fn: Any, *args: Any) -> Any:
    """fn(*args) in a daemon thread: a read that blocks (a FIFO) fails the test instead of hanging it."""
    import threading

    box: dict = {}

    def call() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # handed back to the test
            box["error"] = e

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn.__name__} still running after {seconds} s (blocked reading?)"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_fifo_and_device_are_refused_without_reading(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")
    os.symlink("/dev/zero", tmp_path / "zero.png")
    for name, what in (("pipe.jpg", "a named pipe"), ("zero.png", "a character device")):
        assert _within(20, check_file, tmp_path / name) == f"not a regular file: {what}"
        with pytest.raises(ImageError) as e:
            _within(20, load_image, tmp_path / name)
        assert e.value.why == f"not a regular file: {what}" and e.value.cause == "unreadable"


def test_evaluate_names_special_files_and_counts_hard_links_once(tmp_path: Path, capsys) -> None:
    """A FIFO and a link to /dev/zero in a class folder are named as dropped (unread); a hard link to an
    image, in its own class folder or in another one, counts once, as a symlink always did. Run with a
    timeout, so that a hang fails the test."""
    from test_evaluate import TINY_NAMES, tiny_run

    run = tiny_run(tmp_path)
    data = tmp_path / "data"
    for k, c in enumerate(TINY_NAMES):
        (data / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(_rgb(10 * k + i)).save(data / c / f"{i}.png")
    os.link(data / "apple" / "0.png", data / "apple" / "0_again.png")
    os.link(data / "apple" / "1.png", data / "cherry" / "apple_1.png")  # the same file, another class
    os.mkfifo(data / "banana" / "pipe.png")
    os.symlink("/dev/zero", data / "cherry" / "zero.png")
    js = tmp_path / "m.json"
    argv = ["evaluate", "--weights", str(run), "--data", str(data), "--workers", "0", "--json", str(js),
            "--per-class", str(tmp_path / "pc.csv")]  # fmt: skip
    assert _within(120, main, argv) == 0
    out = capsys.readouterr().out
    m = json.loads(js.read_text())
    assert m["n"] == 6  # two files per class: the hard links add nothing
    assert m["dropped_files"] == [
        {"path": str(data / "banana" / "pipe.png"), "reason": "not a regular file: a named pipe"},
        {"path": str(data / "cherry" / "zero.png"), "reason": "not a regular file: a character device"},
    ]
    rows = (tmp_path / "pc.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[2]) for r in rows] == [2, 2, 2]  # apple_1.png counts in apple, where it is first
    assert f"  {data / 'banana' / 'pipe.png'} (not a regular file: a named pipe)" in out.splitlines()


def test_unique_files_by_inode_keeps_the_file_before_its_links(tmp_path: Path) -> None:
    from convnext.data.images import unique_files, walk_files

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.png").write_bytes(b"x")
    os.symlink(tmp_path / "b" / "x.png", tmp_path / "a" / "link.png")  # walked first, a symlink
    os.link(tmp_path / "b" / "x.png", tmp_path / "b" / "y.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "a" / "broken.png")
    (tmp_path / "b" / "z.png").write_bytes(b"z")
    entries = list(walk_files(tmp_path, set()))
    kept = [Path(entries[i][0]).relative_to(tmp_path).as_posix() for i in unique_files(entries)]
    assert kept == ["a/broken.png", "b/x.png", "b/z.png"]
