"""The ``hubmerge`` command line: one module per subcommand under ``app/commands``.

Each command module exposes ``add_parser(subparsers)`` and ``run(args) -> int``. Errors the user
can fix (any `MergeError` / `EvaluationError`) print as one paragraph and exit 1 (2 for usage);
``--verbose`` shows tracebacks. Gradio is never imported here.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import sys
from collections.abc import Sequence

logger = logging.getLogger("hubmerge")

COMMAND_MODULES = (
    "app.commands.merge",
    "app.commands.multi",
    "app.commands.check",
    "app.commands.evaluate",
    "app.commands.lora",
    "app.commands.search",
    "app.commands.hub",
    "app.commands.serve",
    "app.commands.jobs",
    "app.commands.align",
)


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = []
    from merging.errors import MergeError

    errors.append(MergeError)
    try:
        from evaluation.errors import EvaluationError

        errors.append(EvaluationError)
    except ImportError:  # pragma: no cover - evaluation is part of the package
        pass
    return tuple(errors)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubmerge", description="Merge language models from the Hugging Face Hub."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log details, tracebacks")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.add_parser(subparsers)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments; a command's optional output folder (``out_path``) may come after its
    options too, as click lets mergekit-yaml take it (``merge RECIPE --cuda OUT``: argparse
    alone binds positionals only where they first appear)."""
    args, extras = parser.parse_known_args(argv)
    late = [e for e in extras if not e.startswith("-")]
    if getattr(args, "out_path", "") is None and len(late) == 1 and late == extras:
        args.out_path, extras = late[0], []
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    # importing the commands imports torch: hundreds of thousands of long-lived objects, whose
    # creation would trigger full garbage collections (~0.2 s); made uncollected, then frozen
    gc.disable()
    try:
        parser = build_parser()
    finally:
        gc.enable()
        gc.freeze()
    args = _parse(parser, argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.run(args) or 0)
    except _user_errors() as err:
        if args.verbose:
            logger.exception("failed")
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
