"""Merge search vs fixed recipes on a small zoo trained here: retention, speed, overhead.

The zoo: a tiny Llama (``--hidden``, ``--layers``) with a BPE tokenizer trained on three
synthetic skills, then one full fine-tune per skill (the specialists):

* ``add``: "3 plus 4 is" → " 7."
* ``animals``: "the cat sees the" → " dog near the barn." (pairs fixed by a seeded table)
* ``count``: "after 12 comes" → " 13."

Each skill has disjoint selection (``val``) and ``test`` examples. Every recipe is scored by
mean output-token loss per skill on the test examples; the retention of a skill is
(loss_base − loss_merge) / (loss_base − loss_specialist). The search sees only the pooled
selection examples; the test examples never choose anything.

Rows: each specialist, the fixed recipes (task arithmetic λ = 0.5 / 1, TIES density 0.5,
uniform soup) and the searched TIES recipe for each fitness (``loss``, ``example_loss``,
``worst_gap`` with the selection examples tagged by skill) and budget; columns: per-skill retention,
the minimum over skills, selection and test loss, candidates per minute and the engine's
overhead per candidate (wall time beyond merging in place + scoring), in process and, with
``--ray``, on a local Ray (127.0.0.1) with two workers. ``--seeds`` repeats every search with
other optimiser seeds (the summary gives the median worst-skill retention); ``--ceiling``
adds, per budget, a ``worst_gap`` search tuned on the *test* examples themselves: not a
result, the most the space and the optimiser can reach on those examples at that budget.

Usage (from the repository root; the zoo is cached under ``--zoo-dir``)::

    nice -n 10 .venv/bin/python -m benchmarks.merge_search --budgets 16 48 96 --ray
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from pathlib import Path
from typing import Any

SKILLS = ("add", "animals", "count")
ANIMALS = ["cat", "dog", "fox", "bird", "fish", "frog", "bee", "owl"]
PLACES = ["garden", "river", "house", "forest", "field", "barn"]


def skill_rows(skill: str, seed: int) -> list[dict[str, str]]:
    """Every (input, output) item of a skill, shuffled by `seed`."""
    rng = random.Random(seed)
    if skill == "add":
        rows = [{"input": f"{a} plus {b} is", "output": f" {a + b}."}
                for a in range(10) for b in range(10)]  # fmt: skip
    elif skill == "count":
        rows = [{"input": f"after {n} comes", "output": f" {n + 1}."} for n in range(60)]
    else:
        table = random.Random(99)
        rows = []
        for a in ANIMALS:
            for b in ANIMALS:
                if a != b:
                    rows.append({"input": f"the {a} sees the",
                                 "output": f" {b} near the {table.choice(PLACES)}."})  # fmt: skip
    rng.shuffle(rows)
    return rows


def splits(seed: int = 0, n_val: int = 12, n_test: int = 16) -> dict[str, dict[str, list]]:
    """train / val / test rows per skill, disjoint."""
    out = {}
    for skill in SKILLS:
        rows = skill_rows(skill, seed)
        out[skill] = {"val": rows[:n_val], "test": rows[n_val:n_val + n_test],
                      "train": rows[n_val + n_test:]}  # fmt: skip
    return out


def build_zoo(
    root: Path, *, hidden: int, layers: int, steps: int, ft_steps: int, ft_lr: float
) -> dict[str, str]:
    """Base and specialists under `root` (reused when complete); name → folder."""
    marker = root / "zoo.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from app.demo import llama_config, train_lm, train_tokenizer

    torch.manual_seed(0)
    data = splits()
    text = {s: [r["input"] + r["output"] for r in data[s]["train"]] for s in SKILLS}
    corpus = [line for lines in text.values() for line in lines]
    train_tokenizer(root / "tokenizer", vocab_size=200, corpus=corpus)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(root / "tokenizer")
    config = llama_config(layers=layers, hidden=hidden, vocab=len(tokenizer))
    model = LlamaForCausalLM(config)
    folders = {}

    def save(name: str) -> None:
        model.save_pretrained(root / name, safe_serialization=True)
        tokenizer.save_pretrained(root / name)
        folders[name] = str(root / name)

    # the base sees a little of everything: the specialists have something to add
    mixed = [line for lines in text.values() for line in lines[:8]] + [
        f"the {a} and the {b}." for a in ANIMALS for b in PLACES]  # fmt: skip
    train_lm(model, tokenizer, mixed, seed=0, steps=steps)
    save("base")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for index, skill in enumerate(SKILLS):
        model.load_state_dict(state)
        train_lm(model, tokenizer, text[skill], seed=index + 1, steps=ft_steps, lr=ft_lr)
        save(skill)
    marker.write_text(json.dumps(folders, indent=2))
    return folders


def _recipe(method: str, folders: dict[str, str], **parameters: Any) -> Any:
    from merging import parse_recipe

    data: dict[str, Any] = {"merge_method": method, "models": [{"model": folders[s]}
                                                              for s in SKILLS]}  # fmt: skip
    if method != "linear":
        data["base_model"] = folders["base"]
    if parameters:
        data["parameters"] = parameters
    return parse_recipe(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zoo-dir", type=Path,
                        default=Path.home() / ".cache" / "hubmerge" / "search-zoo")  # fmt: skip
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300, help="base training steps")
    parser.add_argument("--ft-steps", type=int, default=150, help="fine-tuning steps per skill")
    parser.add_argument("--ft-lr", type=float, default=1e-3)
    parser.add_argument("--budgets", type=int, nargs="+", default=[16, 48, 96])
    parser.add_argument("--metrics", nargs="+", default=["loss", "example_loss", "worst_gap"],
                        help="search fitnesses to compare (each with every budget)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="optimiser seeds")
    parser.add_argument("--genes", type=int, help="genes to search (default: budget / 8)")
    parser.add_argument("--ceiling", action="store_true",
                        help="also tune on the test split (the ceiling, not a result)")
    parser.add_argument("--optimizers", nargs="+", default=["auto"],
                        help="search optimisers to compare (auto, cmaes, tpe, nevergrad)")
    parser.add_argument("--starts", nargs="+", default=["ties"],
                        help="methods of the starting recipe (ties: density 0.5; "
                             "task_arithmetic: λ 0.5, the best fixed recipe)")  # fmt: skip
    parser.add_argument("--ray", action="store_true", help="also time the local Ray backend")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/merge_search.json"))
    args = parser.parse_args(argv)

    import torch

    from app.search import InMemoryEvaluator, search
    from app.search.fixed import fixed_recipes
    from merging import load_recipe

    torch.set_num_threads(1)
    started = time.perf_counter()
    root = args.zoo_dir / (f"h{args.hidden}-l{args.layers}-s{args.steps}"
                           f"-ft{args.ft_steps}-lr{args.ft_lr:g}")  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    folders = build_zoo(root, hidden=args.hidden, layers=args.layers, steps=args.steps,
                        ft_steps=args.ft_steps, ft_lr=args.ft_lr)  # fmt: skip
    build_seconds = time.perf_counter() - started
    data = splits()
    selection = [r for s in SKILLS for r in data[s]["val"]]
    tagged = [{**r, "task": s} for s in SKILLS for r in data[s]["val"]]  # for worst_gap
    start = _recipe("ties", folders, density=0.5)
    evaluator = InMemoryEvaluator(start, selection)

    def per_skill(recipe: Any, split: str = "test") -> dict[str, float]:
        return {s: evaluator.score_rows(recipe, data[s][split]) for s in SKILLS}

    base_recipe = _recipe("linear", {**folders, **dict.fromkeys(SKILLS, folders["base"])})
    base, base_val = per_skill(base_recipe), per_skill(base_recipe, "val")
    rows: dict[str, dict[str, Any]] = {}
    for skill in SKILLS:  # a specialist alone: a soup of one model is that model
        one = _recipe("linear", {s: folders[skill] for s in SKILLS})
        rows[f"specialist {skill}"] = {"test": per_skill(one), "val": per_skill(one, "val")}
    specialist = {s: rows[f"specialist {s}"]["test"][s] for s in SKILLS}
    specialist_val = {s: rows[f"specialist {s}"]["val"][s] for s in SKILLS}

    def retention(test: dict[str, float], split: str = "test") -> dict[str, float]:
        low, high = (base, specialist) if split == "test" else (base_val, specialist_val)
        return {s: (low[s] - test[s]) / (low[s] - high[s]) for s in SKILLS}

    for label, recipe in fixed_recipes(start):
        label = "TIES density=0.5 (the starting recipe)" if label == "your recipe" else label
        rows[label] = {"test": per_skill(recipe), "selection": evaluator.score(recipe),
                       "recipe": recipe.to_yaml()}  # fmt: skip
    starts = {"ties": start, "task_arithmetic": _recipe("task_arithmetic", folders,
                                                        **{"lambda": 0.5})}  # fmt: skip
    runs = [(m, o, f, b, seed, False) for m, o, f, b, seed in itertools.product(
        args.starts, args.optimizers, args.metrics, args.budgets, args.seeds)]  # fmt: skip
    if args.ceiling:
        runs += [(m, o, "worst_gap", b, seed, True) for m, o, b, seed in itertools.product(
            args.starts, args.optimizers, args.budgets, args.seeds)]  # fmt: skip
    for method, optimizer, metric, budget, seed, on_test in runs:
        shots = tagged if metric == "worst_gap" else selection
        if on_test:
            shots = [{**r, "task": s} for s in SKILLS for r in data[s]["test"]]
        result = search(starts[method], shots, budget=budget, seed=seed, metric=metric,
                        optimizer=optimizer, max_genes=args.genes)  # fmt: skip
        evaluated = [c for c in result.candidates if not c.cached]
        label = ("ceiling: tuned on the test split" if on_test else f"searched by {metric}") \
            + f" (budget {budget})"  # fmt: skip
        if (args.starts, args.optimizers) != (["ties"], ["auto"]):
            label += f", from {method}, {optimizer}"
        if len(args.seeds) > 1:
            label += f", seed {seed}"
        rows[label] = {
            "test": per_skill(result.recipe), "selection": evaluator.score(result.recipe),
            "genes": len(result.space), "sampler": result.sampler,
            "candidates": len(result.candidates), "fitness": result.best.score,
            "group": [method, optimizer, metric, budget, on_test],
            "candidates_per_minute": 60 * len(result.candidates)
            / max(1e-9, result.seconds - result.load_seconds),
            "eval_seconds": sum(c.seconds for c in evaluated) / max(1, len(evaluated)),
            "overhead_seconds": result.per_candidate_overhead(), "recipe": result.best.recipe,
        }  # fmt: skip
    if args.ray:
        budget = args.budgets[0]
        result = search(start, selection, budget=budget, seed=args.seeds[0], ray=True, workers=2)
        evaluated = [c for c in result.candidates if not c.cached]
        rows[f"searched by loss on local Ray (budget {budget})"] = {
            "test": per_skill(result.recipe), "selection": evaluator.score(result.recipe),
            "genes": len(result.space), "sampler": result.sampler, "workers": result.workers,
            "candidates": len(result.candidates), "ray_start_seconds": result.load_seconds,
            "candidates_per_minute": 60 * len(result.candidates)
            / max(1e-9, result.seconds - result.load_seconds),
            "eval_seconds": sum(c.seconds for c in evaluated) / max(1, len(evaluated)),
            "overhead_seconds": result.per_candidate_overhead(),
        }  # fmt: skip
    for row in rows.values():
        row["retention"] = retention(row["test"])
        row["min_retention"] = min(row["retention"].values())
        row.setdefault("val", per_skill(load_recipe(row["recipe"]), "val")
                       if "recipe" in row else None)  # fmt: skip
        if row["val"] is not None:  # in-sample: the split the search chose on
            row["min_selection_retention"] = min(retention(row["val"], "val").values())
    report = {"zoo": {"hidden": args.hidden, "layers": args.layers, "steps": args.steps,
                      "ft_steps": args.ft_steps, "ft_lr": args.ft_lr,
                      "build_seconds": round(build_seconds, 1)},
              "base_test": base, "specialist_test": specialist, "rows": rows}  # fmt: skip
    report["medians"] = medians(rows)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    for label, value in report["medians"].items():
        print(f"median over seeds, {label}: min ret. {value['test']:.0%} "
              f"(selection split {value['selection']:.0%}, n={value['n']})")
    return 0


def medians(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per search setting (start, optimiser, metric, budget, tuned on test): the median over
    seeds of the worst skill's test and selection-split retention."""
    import statistics

    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows.values():
        if "group" in row:
            method, optimizer, metric, budget, on_test = row["group"]
            key = (f"{'ceiling' if on_test else metric}, budget {budget}, from {method}, "
                   f"{optimizer}")  # fmt: skip
            groups.setdefault(key, []).append(row)
    return {key: {"test": statistics.median(r["min_retention"] for r in group),
                  "selection": statistics.median(r["min_selection_retention"] for r in group),
                  "n": len(group)} for key, group in groups.items()}  # fmt: skip


def table(report: dict[str, Any]) -> str:
    head = ("| recipe | " + " | ".join(f"{s} ret." for s in SKILLS)
            + " | min ret. | min ret. (sel.) | sel. loss | cand./min | overhead/cand. |")
    lines = [head, "|" + "---|" * (len(SKILLS) + 6)]
    for label, row in report["rows"].items():
        cells = [f"{row['retention'][s]:.0%}" for s in SKILLS]
        selection = f"{row['selection']:.3f}" if "selection" in row else "–"
        speed = f"{row['candidates_per_minute']:.0f}" if "candidates_per_minute" in row else "–"
        overhead = f"{row['overhead_seconds'] * 1000:.0f} ms" if "overhead_seconds" in row \
            else "–"  # fmt: skip
        in_sample = row.get("min_selection_retention")
        in_sample = f"{in_sample:.0%}" if in_sample is not None else "–"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {row['min_retention']:.0%} | "
                     f"{in_sample} | {selection} | {speed} | {overhead} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
