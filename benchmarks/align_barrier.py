"""Alignment benchmark: the loss barrier between two independently trained Llamas, before and
after permuting one into the other's basis, and what a sweep costs at a 1B shape.

1. Trains two small Llamas (hidden 128, GQA 4/2 heads, a few layers) from different seeds
   on the same local text (the demo corpus: arithmetic and animal sentences), on the CPU.
2. Aligns B to A with weight matching and with activation matching (`merging.align`).
3. Runs the interpolation probe A→B, A→π_weights(B), A→π_activations(B) on the same held-out
   examples: barrier, and the loss at α=0.5 (the linear merge's loss); it also runs the
   recipe ``linear`` with ``align: {to: A}`` and scores that merge.
4. Times the pieces of one weight-matching sweep at Llama-3.2-1B's shape (one assignment per
   size, one matrix product per kind) and extrapolates a sweep at 1B and 8B.

Usage:
    python benchmarks/align_barrier.py [--steps 400] [--layers 4] [--work /tmp/align-bench]
        [--skip-cost] [--plot barrier.png]

Not a test: nothing here asserts numbers. Timings are noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from app.demo import animal_lines, llama_config, math_lines, train_lm, train_tokenizer

SHAPES = {
    # name: (hidden, intermediate, layers, heads, kv_heads, head_dim, vocab, tied)
    "1B": (2048, 8192, 16, 32, 8, 64, 128256, True),  # Llama-3.2-1B
    "8B": (4096, 14336, 32, 32, 8, 128, 128256, False),  # Llama-3.1-8B
}


def train_pair(work: Path, *, steps: int, layers: int) -> tuple[Path, Path, list[dict[str, str]]]:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    lines = math_lines(600, 1) + animal_lines(600, 2)
    held_out = math_lines(60, 99) + animal_lines(60, 98)
    tok_dir = work / "tokenizer"
    train_tokenizer(tok_dir, vocab_size=300, corpus=lines)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    paths = []
    for name, seed in (("a", 0), ("b", 1)):
        config = llama_config(layers=layers, hidden=128, vocab=len(tokenizer))
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        started = time.perf_counter()
        loss = train_lm(model, tokenizer, lines, seed=seed, steps=steps, lr=3e-3)
        logging.info("trained %s (seed %d): loss %.3f in %.0f s", name, seed, loss,
                     time.perf_counter() - started)  # fmt: skip
        model.save_pretrained(work / name)
        tokenizer.save_pretrained(work / name)
        paths.append(work / name)
    examples = []
    for line in held_out:  # predict the second half of each sentence from the first
        words = line.split(" ")
        cut = len(words) // 2
        examples.append({"input": " ".join(words[:cut]), "output": " " + " ".join(words[cut:])})
    return paths[0], paths[1], examples


def barrier_table(work: Path, a: Path, b: Path, examples: list[dict[str, str]], plot: Path | None):
    from evaluation.probe import compare_barriers, plot_probes
    from evaluation.scoring import Scorer, as_examples
    from merging import merge, parse_recipe
    from merging.align.run import align_models

    aligned = {}
    rows = []
    for method in ("weights", "activations"):
        started = time.perf_counter()
        calibration = work / "calibration.txt"
        calibration.write_text("\n".join(e["input"] + e["output"] for e in examples[::2]))
        result = align_models(a, b, work / f"b-{method}", method=method, overwrite=True,
                              examples=calibration, max_iter=30, device="cpu")  # fmt: skip
        aligned[method] = result
        logging.info("%s: objective %.4g -> %.4g, %d sweeps, %.1f s", method,
                     result.initial_objective, result.final_objective, len(result.sweeps),
                     time.perf_counter() - started)  # fmt: skip
    ends = {"B": b, **{f"{m}-aligned B": work / f"b-{m}" for m in aligned}}
    curves = compare_barriers(a, ends, examples, alphas=[i / 10 for i in range(11)])
    if plot is not None:
        plot_probes(curves, plot)
    for label, curve in curves.items():
        middle = next(p for p in curve.points if abs(p.alpha - 0.5) < 1e-9)
        rows.append((label, curve.barrier, curve.barrier_alpha, middle.loss,
                     curve.points[0].loss, curve.points[-1].loss))  # fmt: skip
    recipe = parse_recipe({
        "merge_method": "linear", "models": [{"model": str(a)}, {"model": str(b)}],
        "align": {"to": str(a)}, "dtype": "float32",
    })  # fmt: skip
    merged = merge(recipe, work / "merged-aligned", options=None)
    from evaluation.loading import load_model, load_tokenizer

    scorer = Scorer(load_model(merged.output, device="cpu", dtype="float32"), load_tokenizer(a))
    recipe_loss = scorer.loss(as_examples(examples))
    return rows, aligned, recipe_loss


def assignment_seconds(n: int) -> float:
    from scipy.optimize import linear_sum_assignment

    cost = torch.randn(n, n, generator=torch.Generator().manual_seed(n)).double().numpy()
    started = time.perf_counter()
    linear_sum_assignment(cost, maximize=True)
    return time.perf_counter() - started


def matmul_rate(device: str = "cpu") -> float:
    """float32 GFLOP/s of one [2048, 8192] @ [8192, 2048] product (best of 3)."""
    a = torch.randn(2048, 8192, device=device)
    b = torch.randn(8192, 2048, device=device)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * 2048 * 8192 * 2048 / best / 1e9


def sweep_cost(shape: tuple[int, ...], gflops: float, seconds_at: dict[int, float]) -> dict:
    hidden, inter, layers, heads, kv, head_dim, vocab, tied = shape
    q, k = heads * head_dim, kv * head_dim
    per_layer = 2 * q * hidden + 2 * k * hidden + 3 * inter * hidden
    params = (1 if tied else 2) * vocab * hidden + layers * per_layer
    residual = 2 * hidden * hidden * params / hidden  # every tensor has one residual axis
    mlp = layers * 3 * 2 * inter * inter * hidden
    attention = layers * (2 * 2 * q * q * hidden + 2 * 2 * k * k * hidden)
    flops = residual + mlp + attention

    def solve(n: int) -> float:  # measured sizes, else ~n^2.5 from the nearest measured one
        near = min(seconds_at, key=lambda m: abs(m - n))
        return seconds_at[near] * (n / near) ** 2.5

    assign = solve(hidden) + layers * solve(inter) + layers * kv * kv * solve(head_dim) * 3
    return {"params": params, "tflop": flops / 1e12, "matmul_s": flops / gflops / 1e9,
            "assignment_s": assign}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--cost-only", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "merging.align.matching", "merging.engine"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="align-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if not args.cost_only:
        barrier_report(work, args)
    if not args.skip_cost:
        cost_report(work)


def barrier_report(work: Path, args: argparse.Namespace) -> None:
    a, b, examples = train_pair(work, steps=args.steps, layers=args.layers)
    rows, aligned, recipe_loss = barrier_table(work, a, b, examples, args.plot)
    print(f"\n{args.layers} layers, hidden 128, GQA 4/2, {args.steps} steps each, "
          f"{len(examples)} held-out examples\n")  # fmt: skip
    print("| path | barrier | at α | loss at α=0.5 (linear merge) | loss A | loss end |")
    print("|---|---|---|---|---|---|")
    for label, barrier, at, middle, start, end in rows:
        print(f"| A → {label} | {barrier:.4f} | {at:.1f} | {middle:.4f} | {start:.4f} | "
              f"{end:.4f} |")  # fmt: skip
    print(f"\nrecipe `linear` + `align: {{to: A}}`: loss {recipe_loss:.4f}")
    for method, result in aligned.items():
        print(f"{method}: objective {result.initial_objective:.5g} → {result.final_objective:.5g}"
              f" in {len(result.sweeps)} sweeps, {result.seconds:.1f} s")  # fmt: skip


def cost_report(work: Path) -> None:
    torch.set_num_threads(torch.get_num_interop_threads())
    seconds_at = {n: assignment_seconds(n) for n in (64, 2048, 8192)}
    gflops = matmul_rate("cpu")
    print(f"\nmeasured: float32 matmul {gflops:.0f} GFLOP/s on this CPU; linear_sum_assignment "
          + ", ".join(f"n={n}: {s:.3f} s" for n, s in seconds_at.items()))  # fmt: skip
    print("\n| shape | params | matmul TFLOP per sweep | matmul s (this CPU) | assignments s |")
    print("|---|---|---|---|---|")
    for name, shape in SHAPES.items():
        cost = sweep_cost(shape, gflops, seconds_at)
        print(f"| {name} | {cost['params'] / 1e9:.2f} B | {cost['tflop']:.1f} | "
              f"{cost['matmul_s']:.0f} | {cost['assignment_s']:.0f} |")  # fmt: skip
    (work / "costs.json").write_text(json.dumps({"gflops": gflops, "assign": seconds_at}))


if __name__ == "__main__":
    main()
