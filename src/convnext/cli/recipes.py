"""``convnext recipes``: the training recipes shipped with the package, one line each, or one recipe."""

from __future__ import annotations

import argparse

from .common import add_progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recipes",
        help="list the bundled training recipes (convnext train --config NAME), or print one",
        description="Without NAME: every bundled recipe with what it trains on what data. With NAME: the "
        "recipe's file, to read or to copy and edit (convnext recipes finetune_folder > my.yaml; a copy "
        "may keep `inherit:` lines, which find the bundled recipes by name).",
    )
    p.add_argument("name", nargs="?", help="a recipe name (with or without .yaml) or a recipe file")
    p.add_argument(
        "--resolved",
        action="store_true",
        help="with NAME: print the recipe with everything it inherits merged in (not yet checked; "
        "`convnext train --config NAME --dry-run` checks it)",
    )
    add_progress(p)  # accepted by every verb, for scripts that pass it to all
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..recipe import bundled_recipes, find_recipe, read_yaml, recipe_summary

    if args.name is None:
        if args.resolved:
            raise UserError("--resolved needs a recipe NAME")
        recipes = {n: p for n, p in bundled_recipes().items() if not n.startswith("_")}
        width = max(len(n) for n in recipes) + 2
        for name, path in recipes.items():
            print(f"{name:<{width}}{recipe_summary(path)}")
        print(
            "\ntrain with one: convnext train --config NAME [key=value ...]; "
            "read or copy one: convnext recipes NAME"
        )
        return 0
    if args.resolved:
        import yaml

        print(yaml.safe_dump(read_yaml(args.name), sort_keys=False), end="")
        return 0
    import sys

    path = find_recipe(args.name)
    print(f"convnext recipes: {path}", file=sys.stderr)  # the text alone on stdout, ready to redirect
    print(path.read_text(encoding="utf-8"), end="")
    return 0
