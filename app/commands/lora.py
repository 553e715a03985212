"""``hubmerge lorahub`` and ``hubmerge lora {merge,combine}``: LoRA adapters on the command line."""

from __future__ import annotations

import argparse
import json
import logging

from app.commands._common import add_token_options, read_token

logger = logging.getLogger(__name__)


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _numbers(text: str) -> list[float]:
    return [float(part) for part in _names(text)]


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    hub = subparsers.add_parser(
        "lorahub", help="learn LoRA combination weights from few-shot examples (LoraHub)"
    )
    hub.add_argument("--base", required=True, help="base model (folder or org/name[@rev])")
    hub.add_argument("--adapters", required=True, type=_names, help="A1,A2,… (same rank)")
    hub.add_argument("--examples", required=True, help='JSON lines: {"input": …, "output": …}')
    hub.add_argument("-o", "--output", required=True, help="output folder")
    hub.add_argument("--steps", type=int, default=40, help="optimiser budget (40)")
    hub.add_argument("--seed", type=int, default=0)
    hub.add_argument("--l1", type=float, default=0.05, help="weight of mean|w| (0.05)")
    hub.add_argument("--batch-size", type=int, default=8)
    hub.add_argument("--device", default="cpu")
    hub.add_argument("--merge", action="store_true", help="write base + adapter, not an adapter")
    hub.add_argument("--overwrite", action="store_true")
    add_token_options(hub)
    hub.set_defaults(run=run_lorahub)

    lora = subparsers.add_parser("lora", help="merge a LoRA adapter or combine adapters")
    commands = lora.add_subparsers(dest="lora_command", required=True, metavar="ACTION")
    merge = commands.add_parser("merge", help="write base + adapter as a full model")
    merge.add_argument("--base", required=True)
    merge.add_argument("--adapter", required=True)
    merge.add_argument("-o", "--output", required=True)
    merge.add_argument("--overwrite", action="store_true")
    add_token_options(merge)
    merge.set_defaults(run=run_merge)

    combine = commands.add_parser("combine", help="combine adapters into one adapter")
    combine.add_argument("--adapters", required=True, type=_names, help="A1,A2,…")
    combine.add_argument("--weights", type=_numbers, help="w1,w2,… (default: all 1)")
    combine.add_argument("--method", default="concat", help="concat (exact), lorahub or svd")
    combine.add_argument("--rank", type=int, help="svd: output rank")
    combine.add_argument("--svd-method", default="task_arithmetic", help="svd: merge method")
    combine.add_argument(
        "--svd-parameters", type=json.loads, default={}, help='svd: JSON, e.g. {"density": 0.5}'
    )
    combine.add_argument("--seed", type=int, default=0)
    combine.add_argument("--base", help="base model, recorded in the config and card")
    combine.add_argument("-o", "--output", required=True)
    combine.add_argument("--overwrite", action="store_true")
    add_token_options(combine)
    combine.set_defaults(run=run_combine)


def run_lorahub(args: argparse.Namespace) -> int:
    from merging.lora.lorahub import lorahub

    def report(step: int, steps: int, value: float) -> None:
        print(f"step {step}/{steps}: objective {value:.4f}", flush=True)

    result = lorahub(
        args.base,
        args.adapters,
        args.examples,
        args.output,
        merge=args.merge,
        overwrite=args.overwrite,
        token=read_token(args),
        steps=args.steps,
        seed=args.seed,
        l1=args.l1,
        batch_size=args.batch_size,
        device=args.device,
        progress=report,
    )
    weights = ", ".join(
        f"{name}: {w:.4f}" for name, w in zip(args.adapters, result.weights, strict=True)
    )
    print(f"weights: {weights}\nfew-shot loss: {result.loss:.4f}\nwrote {result.output}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from merging.engine import MergeOptions
    from merging.lora.merge import merge_into_base

    options = MergeOptions(overwrite=args.overwrite, token=read_token(args))
    result = merge_into_base(args.base, args.adapter, args.output, options=options)
    print(f"wrote {result.output} ({result.tensors} tensors)")
    return 0


def run_combine(args: argparse.Namespace) -> int:
    from merging.lora.combine import CombineParams, combine_adapters

    params = CombineParams(
        rank=args.rank, method=args.svd_method, parameters=args.svd_parameters, seed=args.seed
    )
    result = combine_adapters(
        args.adapters,
        args.output,
        method=args.method,
        weights=args.weights,
        params=params,
        base=args.base,
        overwrite=args.overwrite,
        token=read_token(args),
    )
    if result.overall_error is not None:
        for module, error in result.errors.items():
            print(f"{module}: relative error {error:.4g}")
        print(f"overall relative error: {result.overall_error:.4g}")
    print(f"wrote {result.output} ({result.modules} modules)")
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch to the action the parser chose (each sub-parser also sets ``run``)."""
    return int(args.run(args))
