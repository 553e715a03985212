"""``hubmerge merge RECIPE -o OUT`` (or ``RECIPE OUT``, as mergekit-yaml takes it): run a recipe.

mergekit-yaml's options are accepted too (`mergekit_flags`)."""

from __future__ import annotations

import argparse
import logging

from app.commands import mergekit_flags
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
    p.add_argument("out_path", nargs="?", metavar="OUT", help="output folder (as -o)")
    p.add_argument("-o", "--output", help="output folder (appears when complete)")
    add_run_options(p, overwrite="replace an existing output", dry_run="check only")
    p.set_defaults(run=run)


def add_run_options(p: argparse.ArgumentParser, *, overwrite: str, dry_run: str) -> None:
    """The options of every command that merges: device, shards, overwrite, dry run, strict,
    token, and mergekit-yaml's."""
    p.add_argument("--device", help="cpu, cuda, cuda:1, … (default: accelerator if present)")
    p.add_argument("--shard-size", type=_size, default="5GB", help="max shard size (5GB)")
    p.add_argument("--overwrite", action="store_true", help=overwrite)
    p.add_argument("--dry-run", action="store_true", help=f"{dry_run}; read no weights")
    p.add_argument("--strict", action="store_true", help="keys without effect are errors")
    add_token_options(p)
    mergekit_flags.add_arguments(p)


def output_folder(args: argparse.Namespace, *, required: bool = True) -> str | None:
    """The output folder from ``-o`` or the second argument (mergekit-yaml's place for it)."""
    if args.output and args.out_path and args.output != args.out_path:
        raise SystemExit(f"hubmerge {args.command}: two output folders given ({args.out_path}, "
                         f"-o {args.output}); give one")  # fmt: skip
    output = args.output or args.out_path
    if required and not output:
        raise SystemExit(f"hubmerge {args.command}: give the output folder (hubmerge "
                         f"{args.command} RECIPE OUT, or -o OUT)")  # fmt: skip
    return None if output is None else str(output)


def run(args: argparse.Namespace) -> int:
    from merging import MergeOptions, load_recipe, merge
    from merging.check import check_recipe

    output = str(output_folder(args))
    if args.mergekit_verbosity:
        logging.getLogger().setLevel(logging.DEBUG)
    recipe = load_recipe(args.recipe, strict=args.strict)
    settings = {"device": args.device, "shard_size": args.shard_size}
    recipe, settings, notes = mergekit_flags.apply(args, recipe, settings)
    for note in notes:
        print(f"note: {note}")
    for warning in recipe.warnings:
        print(f"warning: {warning}")
    token = read_token(args)
    if args.dry_run:
        report = check_recipe(recipe, token=token)
        print(report.render())
        return 0 if report.ok else 1
    update, close = (None, lambda: None) if mergekit_flags.quiet(args) else tqdm_progress()
    try:
        result = merge(
            recipe,
            output,
            options=MergeOptions(
                overwrite=args.overwrite, token=token, progress=update, **settings
            ),
        )
    finally:
        close()
    print(f"wrote {result.output} ({result.tensors} tensors, {result.bytes_written / 1e9:.3f} GB)")
    return 0
