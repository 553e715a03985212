"""Tensor-level parity with mergekit: run the same YAML through both, compare every tensor.

Builds tiny float32 Llama checkpoints (base + 2 seeded fine-tunes), runs each method's recipe
through hubmerge (in this process) and through ``mergekit-yaml`` (any venv), and prints the
largest absolute difference per method. DARE is left out: mergekit draws its masks from
torch's global generator, hubmerge from a per-tensor seeded stream, so only the semantics match.

Usage:
    python -m benchmarks.mergekit_parity --mergekit /path/to/venv/bin/mergekit-yaml
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import torch

from merging import load_recipe, merge
from tests.helpers.tiny import build_llama, state_dict

RECIPES = {
    "linear": "models:\n  - model: {a}\n    parameters: {{weight: 0.7}}\n"
    "  - model: {b}\n    parameters: {{weight: 0.3}}\n",
    "task_arithmetic": "base_model: {base}\nmodels:\n"
    "  - model: {a}\n    parameters: {{weight: 0.7}}\n"
    "  - model: {b}\n    parameters: {{weight: 0.5}}\nparameters: {{lambda: 0.9}}\n",
    "ties": "base_model: {base}\nmodels:\n"
    "  - model: {a}\n    parameters: {{weight: 0.7, density: 0.4}}\n"
    "  - model: {b}\n    parameters: {{weight: -0.5, density: [0.3, 0.8]}}\n"
    "parameters: {{normalize: true}}\n",
    "slerp": "base_model: {base}\nmodels:\n  - model: {base}\n  - model: {a}\n"
    "parameters:\n  t:\n    - filter: self_attn\n      value: [0, 0.5, 1]\n    - value: 0.3\n",
    "breadcrumbs": "base_model: {base}\nmodels:\n  - model: {a}\n"
    "    parameters: {{weight: 0.7, density: 0.5, gamma: 0.02}}\n  - model: {b}\n"
    "    parameters: {{weight: 0.5, density: 0.5, gamma: 0.02}}\n",
    "model_stock": "base_model: {base}\nmodels:\n  - model: {a}\n  - model: {b}\n",
    "model_stock filter_wise": "base_model: {base}\nmodels:\n  - model: {a}\n  - model: {b}\n"
    "parameters: {{filter_wise: true}}\n",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mergekit", required=True, help="path to mergekit-yaml")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="parity-"))
    base = build_llama(root / "base", seed=0, layers=3, hidden=64, vocab=256)
    a = build_llama(root / "a", seed=1, base=base, layers=3, hidden=64, vocab=256)
    b = build_llama(root / "b", seed=2, base=base, layers=3, hidden=64, vocab=256)
    print("| method | tensors | max abs diff | max |value| |")
    print("|---|---|---|---|")
    for case, body in RECIPES.items():
        method = case.split()[0]
        text = f"merge_method: {method}\n" + body.format(base=base, a=a, b=b) + "dtype: float32\n"
        recipe_file = root / f"{case.replace(' ', '-')}.yaml"
        recipe_file.write_text(text)
        ours = merge(load_recipe(recipe_file), root / f"hm-{recipe_file.stem}").output
        theirs = root / f"mk-{recipe_file.stem}"
        subprocess.run(
            [args.mergekit, str(recipe_file), str(theirs), "--no-copy-tokenizer"],
            check=True,
            capture_output=True,
        )
        mine, ref = state_dict(ours), state_dict(theirs)
        missing = set(ref) ^ set(mine)
        if missing:
            raise SystemExit(f"{case}: tensor names differ: {sorted(missing)[:5]}")
        diff = max(float((mine[k].float() - ref[k].float()).abs().max()) for k in ref)
        scale = max(float(ref[k].float().abs().max()) for k in ref)
        print(f"| {case} | {len(ref)} | {diff:.3g} | {scale:.3g} |")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
