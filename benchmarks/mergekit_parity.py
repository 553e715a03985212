"""Tensor-level parity with mergekit: run the same YAML through both, compare every tensor.

Builds tiny float32 Llama checkpoints (base + 3 seeded fine-tunes), runs each case's recipe
through hubmerge (in this process) and through ``mergekit-yaml`` (mergekit 0.1.5 in its own
venv), and prints the largest absolute difference per case. Deterministic methods should agree
to float32 rounding (a few 1e-7 relative).

Randomized cases (DARE, DELLA below density 1): mergekit draws its masks from torch's global
generator, hubmerge from a per-tensor seeded stream, so only the distribution can match; for
those the table gives the kept fraction of the task vector's entries and its L1 norm, both
relative to mergekit's (≈ 0 when the distributions agree).

Arcee Fusion keeps or drops whole elements by their importance against a threshold, and its
KL is the exact value where mergekit's is float32 (which keeps only the KL's leading digits):
for it the table counts the elements where the two outputs differ (each one the base's value
in one output and the model's in the other) and the largest |importance/τ − 1| among them.

Usage:
    python -m benchmarks.mergekit_parity --mergekit /tmp/mk-venv/bin/mergekit-yaml [--only della]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import torch

from merging import load_recipe, merge
from tests.helpers.tiny import build_llama, state_dict


def _models(*entries: str) -> str:
    return "models:\n" + "".join(f"  - model: {{{e}}}\n" for e in entries)


def _weighted(*pairs: tuple[str, str]) -> str:
    return "models:\n" + "".join(
        f"  - model: {{{m}}}\n    parameters: {{{{{p}}}}}\n" for m, p in pairs
    )


BASE = "base_model: {base}\n"
RECIPES: dict[str, str] = {
    "linear": _weighted(("a", "weight: 0.7"), ("b", "weight: 0.3")),
    "task_arithmetic": BASE + _weighted(("a", "weight: 0.7"), ("b", "weight: 0.5"))
    + "parameters: {{lambda: 0.9}}\n",
    "ties": BASE + _weighted(("a", "weight: 0.7, density: 0.4"),
                             ("b", "weight: -0.5, density: [0.3, 0.8]"))
    + "parameters: {{normalize: true}}\n",
    "slerp": BASE + _models("base", "a")
    + "parameters:\n  t:\n    - filter: self_attn\n      value: [0, 0.5, 1]\n    - value: 0.3\n",
    "breadcrumbs": BASE + _weighted(("a", "weight: 0.7, density: 0.5, gamma: 0.02"),
                                    ("b", "weight: 0.5, density: 0.5, gamma: 0.02")),
    "model_stock": BASE + _models("a", "b"),
    "model_stock filter_wise": BASE + _models("a", "b") + "parameters: {{filter_wise: true}}\n",
    # the methods added for issue 11
    "della density 1": BASE + _weighted(("a", "weight: 0.7"), ("b", "weight: 0.4"),
                                        ("c", "weight: 0.5")),
    "della_linear density 1": BASE + _weighted(("a", "weight: 0.7"), ("b", "weight: 0.4"))
    + "parameters: {{normalize: true}}\n",
    "della": BASE + _weighted(("a", "weight: 0.7, density: 0.5"),
                              ("b", "weight: 0.4, density: 0.5"),
                              ("c", "weight: 0.5, density: 0.4, epsilon: 0.1")),
    "della_linear": BASE + _weighted(("a", "weight: 0.7, density: 0.5, epsilon: 0.2"),
                                     ("b", "weight: 0.4, density: 0.6"))
    + "parameters: {{rescale: false}}\n",
    "sce": BASE + _models("a", "b", "c"),
    "sce select_topk": BASE + _models("a", "b", "c") + "parameters: {{select_topk: 0.3}}\n",
    "nuslerp": _weighted(("a", "weight: 0.3"), ("b", "weight: 0.7")),
    "nuslerp rows": _weighted(("a", "weight: 0.6"), ("b", "weight: 0.4"))
    + "parameters: {{nuslerp_flatten: false}}\n",
    "nuslerp columns": _weighted(("a", "weight: 0.6"), ("b", "weight: 0.4"))
    + "parameters: {{nuslerp_flatten: false, nuslerp_row_wise: true}}\n",
    "nuslerp base": BASE + _weighted(("a", "weight: 0.3"), ("b", "weight: 0.7")),
    "multislerp": _weighted(("a", "weight: 0.5"), ("b", "weight: 0.3"), ("c", "weight: 0.2")),
    "multislerp base": BASE + _weighted(("a", "weight: 1"), ("b", "weight: 2"),
                                        ("c", "weight: 1")),
    "karcher": _models("a", "b", "c"),
    "karcher max_iter": _models("a", "b") + "parameters: {{max_iter: 3, tol: 1.0e-3}}\n",
    "karcher base": BASE + _models("a", "b"),  # mergekit adds the unlisted base as a point
    "nearswap": BASE + _models("base", "a") + "parameters: {{t: 0.01}}\n",
    "arcee_fusion": BASE + _models("base", "a"),
    "ram": BASE + _models("a", "b", "c"),
    "ramplus_tl": BASE + _models("a", "b", "c") + "parameters: {{r: 0.2, alpha: 0.5}}\n",
}  # fmt: skip
RANDOMIZED = {"della", "della_linear"}
MASKED = {"arcee_fusion"}


def distribution_gap(
    mine: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], base: dict[str, torch.Tensor]
) -> str:
    """Relative gaps of the task vector's non-zero fraction and L1 norm, over all tensors."""
    kept = [sum(float(((m[k] - base[k]) != 0).float().mean()) for k in base) for m in (mine, ref)]
    l1 = [sum(float((m[k] - base[k]).abs().sum()) for k in base) for m in (mine, ref)]
    return f"kept {kept[0] / kept[1] - 1:+.3f}, L1 {l1[0] / l1[1] - 1:+.3f}"


def mask_gap(
    mine: dict[str, torch.Tensor],
    ref: dict[str, torch.Tensor],
    base: dict[str, torch.Tensor],
    other: dict[str, torch.Tensor],
) -> str:
    """Elements where two Arcee Fusion outputs differ, whether each is a flip (base in one,
    the other model in the other), and the largest |importance/τ − 1| among them."""
    from merging.methods.arcee_fusion import fusion_threshold, importance_of, quantile_ranks

    differ = flips = total = 0
    nearest = 0.0
    for k in ref:
        changed = mine[k] != ref[k]
        total += changed.numel()
        if not bool(changed.any()):
            continue
        a, b = base[k].float(), other[k].float()
        flipped = ((mine[k] == a) & (ref[k] == b)) | ((mine[k] == b) & (ref[k] == a))
        differ, flips = differ + int(changed.sum()), flips + int((changed & flipped).sum())
        importance = importance_of(a, b)
        ordered = importance.reshape(-1).sort().values
        tau = fusion_threshold(*(ordered[r] for r in quantile_ranks(ordered.numel())))
        nearest = max(nearest, float((importance[changed] / tau - 1).abs().max()))
    return f"mask: {differ} of {total} differ ({flips} flips, |imp/τ − 1| ≤ {nearest:.2g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mergekit", required=True, help="path to mergekit-yaml")
    parser.add_argument("--only", nargs="*", help="cases to run (default: all)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="parity-"))
    shape = {"layers": 3, "hidden": 64, "vocab": 256}
    base = build_llama(root / "base", seed=0, **shape)
    models = {"base": base}
    for seed, key in enumerate(("a", "b", "c"), start=1):
        models[key] = build_llama(root / key, seed=seed, base=base, **shape)
    print("| case | tensors | max abs diff | max |value| |")
    print("|---|---|---|---|")
    base_tensors = state_dict(base)
    for case, body in RECIPES.items():
        if args.only and case not in args.only and case.split()[0] not in args.only:
            continue
        method = case.split()[0]
        text = f"merge_method: {method}\n" + body.format(**models) + "dtype: float32\n"
        recipe_file = root / f"{case.replace(' ', '-')}.yaml"
        recipe_file.write_text(text)
        theirs = root / f"mk-{recipe_file.stem}"
        subprocess.run(
            [args.mergekit, str(recipe_file), str(theirs), "--no-copy-tokenizer"],
            check=True,
            capture_output=True,
        )
        ref = state_dict(theirs)
        out = merge(load_recipe(recipe_file), root / f"hm-{recipe_file.stem}").output
        mine = state_dict(out)
        missing = set(ref) ^ set(mine)
        if missing:
            raise SystemExit(f"{case}: tensor names differ: {sorted(missing)[:5]}")
        scale = max(float(ref[k].float().abs().max()) for k in ref)
        if case in RANDOMIZED:
            gap = distribution_gap(mine, ref, base_tensors)
            print(f"| {case} | {len(ref)} | random: {gap} | {scale:.3g} |")
            continue
        if case in MASKED:
            gap = mask_gap(mine, ref, base_tensors, state_dict(models["a"]))
            print(f"| {case} | {len(ref)} | {gap} | {scale:.3g} |")
            continue
        diff = max(float((mine[k].float() - ref[k].float()).abs().max()) for k in ref)
        print(f"| {case} | {len(ref)} | {diff:.3g} | {scale:.3g} |")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
