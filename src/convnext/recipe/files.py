"""Recipe files: the bundled recipes by name (``convnext/configs/*.yaml``), YAML read strictly with
``inherit:`` merged underneath, and ``key=value`` overrides."""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml

from ..errors import UserError

RECIPES_DIR = Path(__file__).resolve().parents[1] / "configs"  # the bundled recipes (package data)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "options":
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def bundled_recipes() -> dict[str, Path]:
    """Every recipe shipped with the package by name (file stem); names starting with ``_`` are the shared
    bases the others inherit."""
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}


def recipe_summary(path: Path) -> str:
    """A recipe's one-line description: the first line of its header comment."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def find_recipe(ref: str | Path, relative_to: Path | None = None) -> Path:
    """The recipe file ``ref`` names: an existing path (relative to ``relative_to`` when given, else to the
    working folder), else a bundled recipe by name, with or without ``.yaml``.

    ``configs/NAME.yaml`` that does not exist also means the bundled recipe: it is the checkout's own path to
    it (``configs/`` links to the package's recipes), so a command copied from the README or run in another
    folder finds the same file. Any other missing path is an error, never a guess."""
    raw = Path(ref).expanduser()
    path = relative_to / raw if relative_to is not None and not raw.is_absolute() else raw
    if path.is_file():
        return path
    if path.exists():
        raise UserError(f"config file {path} is a folder, not a recipe file")
    name = raw.name[: -len(raw.suffix)] if raw.suffix in (".yaml", ".yml") else raw.name
    bundled = bundled_recipes()
    in_configs = not raw.is_absolute() and raw.parent.parts in ((), ("configs",))
    if in_configs and name in bundled:
        return bundled[name]
    if name in bundled:  # a path elsewhere that happens to carry a bundled recipe's name
        raise UserError(
            f"config file {path} does not exist; for the bundled recipe of that name pass --config {name}"
        )
    public = [n for n in bundled if not n.startswith("_")]
    close = difflib.get_close_matches(name, public, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise UserError(
        f"config file {path} does not exist and no bundled recipe is called {name!r}{hint} "
        "(`convnext recipes` lists them)"
    )


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last one
    silently, so a recipe could set optim.lr twice and train with the one the reader did not see)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A recipe (file path or bundled name) as a dict, with ``inherit: other`` (a file relative to this
    one, else a bundled recipe by name) merged underneath."""
    path = find_recipe(path) if not _seen else Path(path)
    if path.resolve() in _seen:
        raise UserError(f"config file {path} inherits from itself")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"config file {path} cannot be read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(
            f"config file {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            "save it as UTF-8"
        ) from None
    try:
        raw = yaml.load(text, Loader=_RecipeLoader) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"config file {path} is not valid YAML: {what}{where}") from None
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must be a mapping of sections, not {type(raw).__name__}")
    parent = raw.pop("inherit", None)
    if parent is not None:
        if not isinstance(parent, str) or not parent:
            raise UserError(f"config file {path}: inherit must name one recipe file, got {parent!r}")
        base = read_yaml(find_recipe(parent, relative_to=path.parent), _seen + (path.resolve(),))
        raw = _deep_merge(base, raw)
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``optim.lr=1e-3`` style overrides; values are YAML (so 1e-3, true, null, [1, 2] work)."""
    raw = _deep_merge(raw, {})
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not key=value (e.g. optim.lr=1e-3)")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        parts = key.split(".")
        node = raw
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {} if node.get(p) is None else node[p]
                if not isinstance(node[p], dict):
                    raise UserError(f"override {item!r}: {p!r} is a value, not a section")
            node[p] = dict(node[p])
            node = node[p]
        node[parts[-1]] = parsed
    return raw
