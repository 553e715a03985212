"""``hubmerge merge RECIPE -o OUT``: run a recipe."""

from __future__ import annotations

import argparse

from app.commands._common import add_token_options, read_token, tqdm_progress


def _size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    text = text.strip().upper()
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("merge", help="merge models as a recipe says")
    p.add_argument("recipe", help="recipe YAML (hubmerge or mergekit format)")
    p.add_argument("-o", "--output", required=True, help="output folder (appears when complete)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, … (default: accelerator if present)")
    p.add_argument("--shard-size", type=_size, default="5GB", help="max shard size (5GB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--dry-run", action="store_true", help="check only; read no weights")
    p.add_argument("--strict", action="store_true", help="keys without effect are errors")
    add_token_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from merging import MergeOptions, load_recipe, merge
    from merging.check import check_recipe

    recipe = load_recipe(args.recipe, strict=args.strict)
    for warning in recipe.warnings:
        print(f"warning: {warning}")
    token = read_token(args)
    if args.dry_run:
        report = check_recipe(recipe, token=token)
        print(report.render())
        return 0 if report.ok else 1
    update, close = tqdm_progress()
    try:
        result = merge(
            recipe,
            args.output,
            options=MergeOptions(
                device=args.device,
                shard_size=args.shard_size,
                overwrite=args.overwrite,
                token=token,
                progress=update,
            ),
        )
    finally:
        close()
    print(f"wrote {result.output} ({result.tensors} tensors, {result.bytes_written / 1e9:.3f} GB)")
    return 0
