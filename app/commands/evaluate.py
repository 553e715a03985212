"""``hubmerge evaluate``: run lm-evaluation-harness tasks on a model, or compare several.

    hubmerge evaluate out/merge --tasks hubmerge_mmlu_marketing --limit 20
    hubmerge evaluate out/merge --suite quick --compare base=models/base,models/in1 \
        --output report.json

Prints a markdown table (with deltas against the first `--compare` model), writes the
report as JSON when `--output` is given and its bar chart (± stderr) with `--plot FILE`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``evaluate`` sub-command on an `argparse` subparsers object."""
    parser = subparsers.add_parser(
        "evaluate",
        help="benchmark a model with lm-evaluation-harness (optionally against others)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="model directory or Hub id (shown last, e.g. the merge)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--tasks", help="comma-separated harness task or group names")
    which.add_argument("--suite", help="a named suite (quick, mmlu_small, …)")
    parser.add_argument("--limit", type=int, help="items per task (the first N, fixed order)")
    parser.add_argument("--seed", type=int, help="seed for the harness's RNGs (default 1234)")
    parser.add_argument("--num-fewshot", type=int, help="in-context examples per item")
    parser.add_argument(
        "--include-path", action="append", default=[], help="folder of extra task YAMLs"
    )
    parser.add_argument("--output", type=Path, help="write the report as JSON here")
    parser.add_argument(
        "--plot", type=Path, metavar="FILE", help="draw the scores as a bar chart (PNG) here"
    )
    parser.add_argument(
        "--write-card",
        action="store_true",
        help="add MODEL's results to MODEL/README.md as model-index metadata (local folders)",
    )
    parser.add_argument(
        "--compare",
        help="comma-separated models to evaluate first, as PATH or LABEL=PATH "
        "(the first is the base for deltas), e.g. base=models/base,models/in1",
    )
    parser.add_argument(
        "--ensemble",
        action="store_true",
        help="also score the output ensemble of the --compare models after the first (the inputs)",
    )
    parser.add_argument("--device", default="auto", help="'auto' (GPU→CPU→disk) or one device")
    parser.add_argument("--dtype", default="auto", help="'auto' or a torch dtype name")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cache-dir", type=Path, help="where local benchmark data is kept")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="run code shipped with checkpoints"
    )
    parser.add_argument(
        "--local-tasks-only",
        action="store_true",
        help="never index the harness's built-in tasks (offline; unknown names fail fast)",
    )
    parser.set_defaults(run=run)
    return parser


def parse_models(model: str, compare: str | None) -> dict[str, str]:
    """Label → path for the `--compare` models followed by `model`; labels default to names."""
    entries = [item.strip() for item in (compare or "").split(",") if item.strip()]
    models: dict[str, str] = {}
    for entry in [*entries, model]:
        label, _, path = entry.rpartition("=")
        path = path.strip()
        label = label.strip() or Path(path).name or path
        unique, counter = label, 2
        while unique in models:
            unique, counter = f"{label}_{counter}", counter + 1
        models[unique] = path
    return models


def build_options(args: argparse.Namespace) -> Any:
    from evaluation.harness import EvalOptions

    overrides: dict[str, Any] = {
        "limit": args.limit,
        "seed": args.seed,
        "num_fewshot": args.num_fewshot,
        "include_paths": tuple(Path(p) for p in args.include_path),
        "cache_dir": args.cache_dir,
        "batch_size": args.batch_size,
        "device": args.device,
        "dtype": args.dtype,
        "trust_remote_code": args.trust_remote_code,
        "include_defaults": False if args.local_tasks_only else None,
    }
    if args.suite:
        return EvalOptions.from_suite(args.suite, **overrides)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    return EvalOptions(tasks=tasks, **{k: v for k, v in overrides.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    """Run the command; 0 on success, 2 when the evaluation fails on purpose (bad task, …)."""
    # (imported here, not at the top: every CLI command builds the parser with this module,
    # and `evaluation` costs ~0.17 s of imports that only this command needs)
    from evaluation.errors import EvaluationError
    from evaluation.harness import compare
    from evaluation.report import comparison_table, report_to_model_index, save_report

    try:
        options = build_options(args)
        models = parse_models(args.model, args.compare)
        report = compare(models, options)
        if args.ensemble:
            from evaluation.ensemble import evaluate_ensemble

            inputs = list(models.values())[1:-1]
            if not inputs:
                raise EvaluationError("--ensemble needs inputs: --compare BASE,INPUT1,INPUT2")
            report = report.merged_with(evaluate_ensemble(inputs, options))
    except (EvaluationError, ValueError) as err:
        logger.error("evaluation failed: %s", err)
        sys.stderr.write(f"error: {err}\n")
        return 2
    sys.stdout.write(comparison_table(report) + "\n")
    if args.output:
        save_report(report, args.output)
        logger.info("report written to %s", args.output)
    if args.plot:
        from evaluation.plots import plot_report

        plot_report(report, args.plot)
        logger.info("bar chart written to %s", args.plot)
    if args.write_card:
        from merging.hub import write_eval_results_to_card

        card = write_eval_results_to_card(args.model, report_to_model_index(report))
        logger.info("results written into %s", card)
    return 0
