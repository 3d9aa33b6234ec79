"""Speed figures live in BENCHMARKS.md (with their command, machine and date), never in a docstring or a
comment, where they go stale unseen (ARCHITECTURE.md, "Where each concern lives"). A docstring says why; a
scan of every docstring and comment for a quoted speed (a ratio like 1.3x, images/s, ms, "% faster") fails
on a new one. What the scan also matches but is no measured speed is listed here with its reason."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import convnext

PKG = Path(convnext.__file__).parent
SPEED = re.compile(
    r"~?\d+(\.\d+)?x(?![\d\w])"  # a ratio: 1.3x (not a 7x7 kernel)
    r"|\d+(\.\d+)? ?(images/s|img/s|ms|us)\b"  # a rate or a time
    r"|\d+ ?% (faster|slower|off|of the (time|step))"  # a share of the time
)
NOT_SPEED = {  # (file, the matched text's context) -> why it is no speed figure
    ("bench/models.py", "backward ~ 2x forward"): "the FLOP count of a training step",
    ("data/config.py", "4x less to copy"): "uint8 against float32: bytes",
    ("engine/preflight.py", "1.2-2x the real growth"): "how far the memory estimate overshoots",
    ("models/chunked_mlp.py", "expand 4x"): "the MLP's width",
    ("models/chunked_mlp.py", "4x-wide hidden"): "the MLP's width",
    ("models/convnext.py", "expand 4x"): "the MLP's width",
    ("serve/app.py", "up to 4x the limit"): "a size limit",
    ("serve/server.py", "~40 ms for the client's delayed ACK"): "TCP's delayed-ACK timer, not ours",
}


def _texts(src: str) -> list[tuple[int, str]]:
    """(line, text) of every docstring and comment."""
    out = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                out.append((node.body[0].lineno, doc))
    out += [
        (t.start[0], t.string)
        for t in tokenize.generate_tokens(io.StringIO(src).readline)
        if t.type == tokenize.COMMENT
    ]
    return out


def test_no_speed_figure_in_a_docstring_or_comment() -> None:
    found, allowed_seen = [], set()
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        for line, text in _texts(path.read_text(encoding="utf-8")):
            flat = " ".join(text.split())
            for m in SPEED.finditer(flat):
                near = flat[max(0, m.start() - 60) : m.end() + 40]
                allowed = [k for k in NOT_SPEED if k[0] == rel and k[1] in near]
                if allowed:
                    allowed_seen.update(allowed)
                else:
                    found.append(f"{rel}:{line}: ...{near}...")
    assert not found, "speed figures belong in BENCHMARKS.md (keep the why here):\n" + "\n".join(found)
    assert allowed_seen == set(NOT_SPEED), f"stale NOT_SPEED entries: {set(NOT_SPEED) - allowed_seen}"
