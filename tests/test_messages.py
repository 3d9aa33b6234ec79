"""A message to the user has one channel: ``logging`` in the ``convnext`` tree, through convnext/messages.py.

The command line shows it as ``convnext <verb>: note: ...`` / ``convnext <verb>: warning: ...``; a library
caller configures it the standard way. No module outside cli/ prints to stderr or calls ``warnings.warn``,
except the ones named below with their reason."""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convnext import messages

PKG = Path(__file__).resolve().parents[1] / "src" / "convnext"
CLI = Path(sys.executable).with_name("convnext")

# (module, what) -> why it does not go through convnext.messages
ALLOWED: dict[tuple[str, str], str] = {
    ("messages.py", "stderr"): "the command line's handler of the channel itself",
    (
        "engine/train/console.py",
        "stderr",
    ): "a training run's own log (its output, read as a record of the run)",
    ("engine/train/signals.py", "stderr"): "said inside a signal handler, where logging's locks may deadlock",
    ("engine/pauses.py", "stderr"): "the kill tests' pause protocol, read by the tests, not by a user",
    ("models/factory.py", "warnings.warn"): "a DeprecationWarning for a programmer (-W filters it); models/ "
    "imports nothing of the package",
}


def _uses(path: Path) -> list[tuple[str, int]]:
    """(what, line) for each print to stderr, sys.stderr.write, warnings.warn and convnext logger by name."""
    tree = ast.parse(path.read_text(), str(path))
    warn_names = {
        a.asname or a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module == "warnings"
        for a in n.names
        if a.name == "warn"
    }
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = ast.unparse(f)
        if name == "print" and any(
            k.arg == "file" and "stderr" in ast.unparse(k.value) for k in node.keywords
        ):
            out.append(("stderr", node.lineno))
        elif (
            isinstance(f, ast.Attribute)
            and "stderr" in ast.unparse(f.value)
            and f.attr in ("write", "writelines")
        ):
            out.append(("stderr", node.lineno))
        elif name == "warnings.warn" or name in warn_names:
            out.append(("warnings.warn", node.lineno))
        elif name.endswith("getLogger") and node.args and isinstance(node.args[0], ast.Constant):
            if str(node.args[0].value).split(".")[0] == "convnext":  # our loggers: getLogger(__name__)
                out.append(("getLogger", node.lineno))
    return out


def test_no_module_outside_cli_says_anything_but_through_messages() -> None:
    found: dict[tuple[str, str], list[int]] = {}
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG).as_posix()
        if rel.startswith("cli/"):
            continue
        for what, line in _uses(p):
            found.setdefault((rel, what), []).append(line)
    wrong = [f"{m} line {lines[0]}: {what}" for (m, what), lines in found.items() if (m, what) not in ALLOWED]
    assert not wrong, "say it with convnext.messages.note/warn (logging) instead: " + "; ".join(wrong)
    stale = sorted(set(ALLOWED) - set(found))
    assert not stale, f"ALLOWED names exceptions that no longer exist: {stale}"


def _mini_imagenet(src: Path) -> None:
    """A 3-split few-shot mini-ImageNet (disjoint classes), which `convnext prepare` pools with a note."""
    from PIL import Image

    for split, wnid in (("train", "n01532829"), ("val", "n01558993"), ("test", "n01855672")):
        rows = ["filename,label"]
        for i in range(2):
            name = f"{wnid}{i:08d}.jpg"
            (src / "images").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(src / "images" / name, "JPEG")
            rows.append(f"{name},{wnid}")
        (src / f"{split}.csv").write_text("\n".join(rows) + "\n")


def test_the_cli_says_a_note_as_one_line(tmp_path: Path) -> None:
    src, dst = tmp_path / "mini", tmp_path / "out"
    _mini_imagenet(src)
    env = {**os.environ, "RANK": "0"}
    r = subprocess.run(
        [str(CLI), "prepare", "mini-imagenet", str(src), str(dst), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        f"convnext prepare: note: mini-ImageNet: the csv splits in {src} have disjoint classes (few-shot); "
        "pooled 6 images of 3 classes and split them per class (0.2 to val, seed 0)"
    ]


def test_a_library_caller_configures_messages_as_any_logging(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    from convnext.engine.logging import read_metrics

    monkeypatch.setattr(messages, "_said", set())
    torn = tmp_path / "metrics.jsonl"
    torn.write_text('{"epoch": 1}\n{"epo')
    with caplog.at_level(logging.INFO, logger="convnext"):
        assert read_metrics(torn) == [{"epoch": 1}]
    (rec,) = caplog.records
    assert rec.name == "convnext.engine.logging" and rec.levelno == logging.WARNING
    assert rec.getMessage().startswith(f"{torn}: ignoring its torn last line")
    caplog.clear()
    monkeypatch.setattr(messages, "_said", set())
    monkeypatch.setattr(logging.getLogger("convnext"), "level", logging.ERROR)  # setLevel, undone after
    logging.getLogger("convnext").setLevel(logging.ERROR)
    assert read_metrics(torn) == [{"epoch": 1}]
    assert not caplog.records and "torn" not in capsys.readouterr().err
    logging.getLogger("convnext").setLevel(logging.NOTSET)
    with caplog.at_level(logging.WARNING, logger="convnext"):  # silenced is not "said": it shows once enabled
        read_metrics(torn)
    assert len(caplog.records) == 1


def test_the_cli_handler_formats_and_keeps_rank_0(capsys, monkeypatch) -> None:
    monkeypatch.setattr(messages, "_said", set())
    log = logging.getLogger("convnext")
    try:
        messages.install_cli_handler("export")
        messages.note("a fact")
        messages.note("a fact")  # once
        messages.warn("a problem", once=False)
        messages.warn("a problem", once=False)
    finally:
        messages.remove_cli_handler()
    assert capsys.readouterr().err.splitlines() == [
        "convnext export: note: a fact",
        "convnext export: warning: a problem",
        "convnext export: warning: a problem",
    ]
    assert log.level == logging.NOTSET and not log.handlers  # a library caller gets logging's defaults back
    monkeypatch.setenv("RANK", "1")  # torchrun's other ranks say nothing (each would say the same)
    try:
        messages.install_cli_handler("train")
        messages.warn("from rank 1")
    finally:
        messages.remove_cli_handler()
    assert "rank 1" not in capsys.readouterr().err
