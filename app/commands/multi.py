"""``hubmerge multi RECIPE -I DIR [OUT]``: a multi-stage recipe, as mergekit-multi runs it.

Each YAML document is a recipe; one with a ``name`` is merged into ``DIR/name``, and later
documents use that name as a model (`merging.multi`). mergekit-multi's options are taken as
it spells them (``--intermediate-dir`` / ``-I``, ``--out-path``, ``--lazy`` / ``--no-lazy``)
with mergekit-yaml's (`mergekit_flags`), applied to every stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.commands import mergekit_flags
from app.commands._common import read_token, tqdm_progress
from app.commands.merge import add_run_options, output_folder

if TYPE_CHECKING:
    from merging.multi import Stage


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("multi", help="run a multi-stage recipe (mergekit-multi's)")
    p.add_argument("recipe", help="YAML documents, each a recipe; earlier ones with a 'name'")
    p.add_argument("out_path", nargs="?", metavar="OUT", help="output of the unnamed final merge")
    p.add_argument("-o", "--output", "--out-path", dest="output", help="as OUT")
    p.add_argument("-I", "--intermediate-dir", required=True, type=Path,
                   help="folder of the named stages' outputs (DIR/name)")  # fmt: skip
    p.add_argument("--lazy", action=argparse.BooleanOptionalAction, default=True,
                   help="leave a stage whose output records the same recipe (default)")  # fmt: skip
    add_run_options(p, overwrite="merge a stage again over its folder",
                    dry_run="validate, and check the stages whose inputs exist")  # fmt: skip
    p.set_defaults(run=run)


def _label(stage: Stage) -> str:
    return "final merge" if stage.name is None else f"stage {stage.name}"


def run(args: argparse.Namespace) -> int:
    from merging import MergeOptions
    from merging.multi import check_stages, parse_multi, run_multi

    output = output_folder(args, required=False)
    if args.mergekit_verbosity:
        logging.getLogger().setLevel(logging.DEBUG)
    multi = parse_multi(args.recipe, args.intermediate_dir, strict=args.strict)
    if any(stage.name is None for stage in multi.stages) and not output:
        raise SystemExit("hubmerge multi: the recipe has an unnamed final merge: give OUT")
    given: dict[str, Any] = {"device": args.device, "shard_size": args.shard_size}
    stages: list[Stage] = []
    settings, notes = given, list[str]()
    for stage in multi.stages:  # (one MergeOptions for every stage: the final stage's, run last)
        recipe, settings, notes = mergekit_flags.apply(args, stage.recipe, given)
        stages.append(dataclasses.replace(stage, recipe=recipe))
    multi = dataclasses.replace(multi, stages=tuple(stages))
    for note in notes:
        print(f"note: {note}")
    for stage in multi.stages:
        for warning in stage.recipe.warnings:
            print(f"warning ({_label(stage)}): {warning}")
    token = read_token(args)
    target = Path(output) if output else None
    if args.dry_run:
        reports = check_stages(multi, target, token=token)
        for stage in multi.stages:
            report = reports[stage.name]
            if report is None:
                print(f"{_label(stage)}: reads {', '.join(stage.needs)}; checked once merged")
            else:
                print(f"{_label(stage)}:\n{report.render()}")
        return 0 if all(r is None or r.ok for r in reports.values()) else 1

    def announce(stage: Stage, folder: Path, merging: bool) -> None:
        print(f"{_label(stage)}: {'merging into' if merging else 'up to date, left as it is:'} "
              f"{folder}")  # fmt: skip

    update, close = (None, lambda: None) if mergekit_flags.quiet(args) else tqdm_progress()
    try:
        options = MergeOptions(overwrite=args.overwrite or not args.lazy, token=token,
                               progress=update, **settings)  # fmt: skip
        results = run_multi(multi, target, options=options, lazy=args.lazy, on_stage=announce)
    finally:
        close()
    merged = sum(result is not None for result in results)
    print(f"{merged} of {len(results)} stage(s) merged")
    return 0
