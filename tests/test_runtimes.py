"""The table of runtimes (convnext.runtimes) is the one place that names a backend or an exported suffix."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convnext import runtimes
from convnext.runtimes import RUNTIMES, runtime_for

PKG = Path(__file__).resolve().parents[1] / "src" / "convnext"


def spelled_outside(pkg: Path) -> list[str]:
    """Every string literal of the package outside ``runtimes/`` that is a runtime's name, benchmark name,
    export format or file suffix (help and error sentences that mention them inside longer text pass)."""
    names = {r.name for r in RUNTIMES} | set(runtimes.BENCH_BACKENDS) | set(runtimes.FORMATS)
    names |= set(runtimes.EXPORT_SUFFIXES)
    names -= {runtimes.TORCH.name}  # "torch" is also the package, the peers' name, a version key
    found = []
    for path in sorted(pkg.rglob("*.py")):
        if path.is_relative_to(pkg / "runtimes"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() in names:
                found.append(f"{path.relative_to(pkg)}:{node.lineno} {node.value!r}")
    return found


def test_no_backend_table_outside_the_registry() -> None:
    found = spelled_outside(PKG)
    assert not found, "name these through convnext.runtimes (RUNTIMES, runtime_for, ...): " + "; ".join(found)


@pytest.mark.parametrize("runtime", RUNTIMES, ids=lambda r: r.name)
def test_each_runtime_is_one_module_and_one_record(runtime: runtimes.Runtime) -> None:
    from convnext.runtimes.base import Runner

    assert (PKG / "runtimes" / f"{runtime.module}.py").is_file()
    assert issubclass(runtime.runner, Runner)
    if runtime.suffix:
        assert runtime_for(f"model{runtime.suffix.upper()}") is runtime and runtime.format
        assert callable(runtime.write) and runtime.precisions
    else:
        assert runtime_for("model.pth") is runtime
    for precision in runtime.bench:
        assert runtimes.BENCH[runtime.bench_name(precision)] == (runtime, precision)


def test_cli_help_reads_the_registry_without_torch() -> None:
    """`--help` of serve, benchmark and export lists the registry's names, and imports no torch."""
    code = (
        "import sys, contextlib, io\n"
        "from convnext.cli.main import main\n"
        "for verb in ('serve', 'benchmark', 'export'):\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "        main([verb, '--help'])\n"
        "    print(out.getvalue())\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    env = {**os.environ, "COLUMNS": "2000"}  # no wrapping (argparse breaks lines at hyphens too)
    text = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout
    flat = " ".join(text.split())
    assert text.strip().endswith("NO-TORCH")
    assert ",".join(runtimes.BENCH_BACKENDS) in flat
    assert "{" + ",".join(runtimes.SERVE_BACKENDS) + "}" in flat
    assert "{" + ",".join(runtimes.FORMATS) + "}" in flat
