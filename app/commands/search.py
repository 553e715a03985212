"""``hubmerge search RECIPE --examples F.jsonl -o OUT`` (or ``--tasks T --limit N`` without
``--examples``: the tasks' documents are the examples): find the recipe's parameters by
scoring candidates in memory, then merge the winner (see `app.search`)."""

from __future__ import annotations

import argparse
import logging

from app.commands._common import add_token_options, read_token

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "search", help="search a recipe's weights / densities / λ on examples, merge the best"
    )
    p.add_argument("recipe", help="starting recipe YAML (its method and models set the space)")
    p.add_argument("--examples",
                   help='selection examples, JSON lines {"input": …, "output": …} (without: '
                        "the documents of --tasks, --limit of each)")  # fmt: skip
    p.add_argument("--test", help="held-out examples: reported, never used to choose")
    p.add_argument("-o", "--output", required=True, help="output folder of the best merge")
    p.add_argument("--budget", type=int, default=32,
                   help="candidates in all, the starting recipes included (32); exact")  # fmt: skip
    p.add_argument("--timeout", type=float, help="seconds after which no candidate is started")
    p.add_argument("--seed", type=int, default=0, help="optimiser seed (0)")
    p.add_argument("--metric", default="loss",
                   choices=["loss", "example_loss", "worst_gap", "exact_match",
                            "multiple_choice"],
                   help="loss: per output token; example_loss: every example weighs the same; "
                        "worst_gap: the share of its gain the worst task loses (examples "
                        'name their task: {"task": …})')  # fmt: skip
    p.add_argument("--genes", type=int, help="genes to search (default: about budget / 8)")
    p.add_argument("--optimizer", default="auto", choices=["auto", "cmaes", "tpe", "nevergrad"],
                   help="auto: CMA-ES from 4 genes, TPE below; nevergrad: NGOpt")  # fmt: skip
    harness = p.add_argument_group(
        "harness re-scoring", "after the search, the top candidates and your recipe are scored "
        "by lm-evaluation-harness, in memory")  # fmt: skip
    harness.add_argument("--tasks", help="harness tasks (comma-separated) or a suite name; "
                         "the best score on them chooses the winner; without --examples "
                         "their documents are the selection examples too")  # fmt: skip
    harness.add_argument("--limit", type=int, help="items per task of --tasks (default: all)")
    harness.add_argument("--rescore", type=int, default=3,
                         help="how many of the best distinct candidates to re-score")  # fmt: skip
    harness.add_argument("--guard", help="damage guard: 'mmlu' (the offline MMLU), a suite or "
                         "tasks; a candidate more than 2 standard errors below the reference "
                         "is not chosen")  # fmt: skip
    harness.add_argument("--guard-limit", type=int,
                         help="items per guard task (mmlu: 5 per subject)")  # fmt: skip
    harness.add_argument("--guard-reference", default="recipe", choices=["recipe", "base"],
                         help="compare the guard with your recipe or the base")  # fmt: skip
    p.add_argument("--device", default="cpu", help="where candidates are merged and scored")
    backend = p.add_mutually_exclusive_group()
    backend.add_argument("--ray", action="store_true",
                         help="score on a local Ray (127.0.0.1; needs hubmerge[ray])")  # fmt: skip
    backend.add_argument("--ray-address", help="score on an existing Ray cluster (HOST:PORT)")
    p.add_argument("--workers", type=int, help="Ray workers (default: the cluster's CPUs)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_token_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from app.commands._common import tqdm_progress
    from app.search import search_and_merge
    from app.search.errors import SearchError
    from app.search.rescore import resolve_tasks, summary_lines
    from app.search.tasks import load_search_examples
    from merging import load_recipe

    if args.limit is not None and not args.tasks:
        raise SearchError("--limit applies to --tasks; name the tasks")
    if args.guard_limit is not None and not args.guard:
        raise SearchError("--guard-limit applies to --guard; name the guard")
    if not args.examples and not args.tasks:
        raise SearchError("give --examples, or --tasks (with --limit) to take them from")
    tasks = resolve_tasks(args.tasks, args.limit) if args.tasks else None
    guard = resolve_tasks(args.guard, args.guard_limit) if args.guard else None
    recipe = load_recipe(args.recipe)
    examples = load_search_examples(args.examples) if args.examples else None
    test = load_search_examples(args.test) if args.test else None
    update, close = tqdm_progress()
    try:
        result = search_and_merge(
            recipe, examples, args.output, test=test, overwrite=args.overwrite,
            progress=update, budget=args.budget, seed=args.seed, timeout=args.timeout,
            metric=args.metric, device=args.device, ray=args.ray, ray_address=args.ray_address,
            workers=args.workers, max_genes=args.genes, optimizer=args.optimizer, tasks=tasks,
            guard=guard, rescore=args.rescore, guard_reference=args.guard_reference,
            token=read_token(args),
        )  # fmt: skip
    finally:
        close()
    best, fixed = result.best, result.best_fixed()
    print(
        f"searched {len(result.space)} gene(s) with {result.sampler}: "
        f"{len(result.candidates)} candidate(s) in {result.seconds:.1f} s on {result.backend}"
    )
    if fixed is not None:
        print(f"best starting recipe: {fixed.origin}, {result.metric} {fixed.score:.5f}")
    if result.rescored is not None:
        for line in summary_lines(result.rescored):
            print(line)
    print(f"best: candidate {best.index} ({best.origin}), {result.metric} {best.score:.5f}; "
          f"written merge {result.reproduced:.5f}")  # fmt: skip
    if result.test_score is not None:
        print(f"held-out test {result.metric}: {result.test_score:.5f}")
    print(f"wrote {result.output} (recipe: hubmerge_recipe.yaml, search: search.json)")
    return 0
