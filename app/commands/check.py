"""``hubmerge check RECIPE``: compatibility report from headers only; exit 0 iff mergeable."""

from __future__ import annotations

import argparse

from app.commands._common import add_token_options, read_token


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("check", help="check that a recipe's models can be merged")
    p.add_argument("recipe", help="recipe YAML")
    p.add_argument("--strict", action="store_true", help="keys without effect are errors")
    p.add_argument(
        "--allow-crimes", action="store_true", help="as allow_crimes: true in the recipe"
    )
    add_token_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from merging import load_recipe
    from merging.check import check_recipe

    recipe = load_recipe(args.recipe, strict=args.strict)
    if args.allow_crimes:
        recipe = recipe.model_copy(update={"allow_crimes": True})
    report = check_recipe(recipe, token=read_token(args))
    print(report.render())
    return 0 if report.ok else 1
