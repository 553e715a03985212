"""``hubmerge align --reference A --model B -o OUT``: permute B into A's basis (Git Re-Basin).

    hubmerge align --reference org/a --model org/b -o out/b-aligned
    hubmerge align --reference a --model b -o out/b2 --method activations --examples c.jsonl
    hubmerge align --reference a --model b -o out/b3 --probe heldout.jsonl

OUT is B with its hidden units permuted (same tensors, shapes, dtypes), ``alignment.json``
and a card. Every run checks that OUT computes B's function and fails, writing nothing, if
not. ``--probe EXAMPLES`` also measures the loss barrier A→B and A→OUT on the same examples,
prints both and draws them on one plot (``OUT/barrier.png``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from app.commands._common import add_token_options, read_token


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "align",
        help="permute a model into another's basis (Git Re-Basin), function-preserving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--reference", required=True, help="model A, whose basis is kept")
    p.add_argument("--model", required=True, help="model B, the one permuted")
    p.add_argument("-o", "--output", required=True, help="output folder (appears when checked)")
    p.add_argument("--method", choices=("weights", "activations"), default="weights")
    p.add_argument("--examples", help="calibration texts for --method activations (jsonl/lines)")
    p.add_argument("--max-iter", type=int, default=20, help="weight-matching sweeps (20)")
    p.add_argument("--seed", type=int, default=0, help="order of the permutations in a sweep")
    p.add_argument("--device", help="cpu, cuda, … (default: CUDA when present)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--probe", type=Path, help='{"input","output"} jsonl: barrier before/after')
    add_token_options(p)
    p.set_defaults(run=run)


def _print_sweep(event: Any) -> None:
    objective = getattr(event, "objective", None)
    if objective is not None:
        print(
            f"sweep {event.done}: objective {objective:.6g}, {event.changed} permutations changed"
        )


def run(args: argparse.Namespace) -> int:
    from merging.align.run import align_models

    result = align_models(
        args.reference, args.model, args.output, method=args.method, examples=args.examples,
        max_iter=args.max_iter, seed=args.seed, device=args.device, overwrite=args.overwrite,
        token=read_token(args), progress=_print_sweep,
    )  # fmt: skip
    if result.lineage.pointless:
        print(f"note: alignment is pointless here: {result.lineage.reason}")
    print(
        f"aligned {args.model} to {args.reference}: objective {result.initial_objective:.6g} → "
        f"{result.final_objective:.6g} in {len(result.sweeps)} sweeps; function check max "
        f"|Δlogit| {result.check.max_abs_diff:.2g}; wrote {result.output}"
    )
    if args.probe is not None:
        barriers = probe_before_after(
            args.reference, args.model, result.output, args.probe,
            device=args.device or "cpu", token=read_token(args),
        )  # fmt: skip
        print(f"loss barrier A → B:         {barriers['before']:.4f}")
        print(f"loss barrier A → aligned B: {barriers['after']:.4f}")
    return 0


def probe_before_after(
    reference: str,
    model: str,
    aligned: Path,
    examples: Path,
    *,
    device: str = "cpu",
    token: str | None = None,
) -> dict[str, float]:
    """Barriers A→B and A→aligned B on ``examples``; plot into ``aligned/barrier.png`` and
    record them in ``aligned/alignment.json``."""
    from evaluation.probe import compare_barriers, plot_probes
    from evaluation.scoring import load_examples
    from merging.sources import resolve_model

    paths = {"B": resolve_model(model, token=token).path, "aligned B": Path(aligned)}
    a = resolve_model(reference, token=token).path
    results = compare_barriers(a, paths, load_examples(examples), device=device)
    aligned = Path(aligned)
    plot_probes(results, aligned / "barrier.png")
    barriers = {"before": results["B"].barrier, "after": results["aligned B"].barrier}
    record = aligned / "alignment.json"
    data = json.loads(record.read_text())
    data["barrier"] = {**barriers, "examples": str(examples),
                       "curves": {k: r.rows() for k, r in results.items()}}  # fmt: skip
    record.write_text(json.dumps(data, indent=1) + "\n")
    return barriers
