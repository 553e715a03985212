"""Tensor-level parity with mergekit for the tensor plan: ``slices:`` and tokenizer sources.

Builds tiny float32 Llamas (two related 4-layer models, one unrelated, two with their own
trained tokenizers), runs each recipe through hubmerge (in this process) and through
``mergekit-yaml`` (mergekit 0.1.5 in its own venv), and prints the largest absolute difference
over every tensor (vocabulary rows compared by token), and whether the output configs agree
on ``num_hidden_layers`` and ``vocab_size`` and the tokenizers on their vocabularies.

Usage:
    python -m benchmarks.slices_parity --mergekit /tmp/mk-venv/bin/mergekit-yaml [--only union]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import torch

from merging import load_recipe, merge
from tests.helpers.tiny import CORPUS, build_llama, state_dict, train_tokenizer

ANIMALS = [f"the {a} and the {b} swim near {c}." for a in ("zebra", "otter", "heron", "koala")
           for b in ("lynx", "panda", "walrus") for c in ("rivers", "lakes", "reefs")]  # fmt: skip

RECIPES = {
    "frankenmerge": """merge_method: passthrough
slices:
  - sources: [{{model: {a}, layer_range: [0, 3]}}]
  - sources: [{{model: {c}, layer_range: [1, 4]}}]
  - sources:
      - model: {a}
        layer_range: [2, 4]
        parameters:
          scale: [{{filter: o_proj, value: 0.0}}, {{filter: down_proj, value: 0.5}}, {{value: 1.0}}]
""",
    "depth upscaling": """merge_method: passthrough
slices:
  - sources: [{{model: {a}, layer_range: [0, 3]}}]
  - sources: [{{model: {a}, layer_range: [1, 4]}}]
""",
    "slerp slices": """merge_method: slerp
base_model: {a}
slices:
  - sources: [{{model: {a}, layer_range: [0, 4]}}, {{model: {b}, layer_range: [0, 4]}}]
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
""",
    "ties two slices": """merge_method: ties
base_model: {a}
slices:
  - sources:
      - {{model: {a}, layer_range: [0, 2]}}
      - {{model: {b}, layer_range: [0, 2], parameters: {{density: [1.0, 0.3], weight: 0.6}}}}
      - {{model: {c}, layer_range: [0, 2], parameters: {{density: 0.5, weight: 0.4}}}}
    parameters: {{normalize: false}}
  - sources:
      - {{model: {a}, layer_range: [2, 4]}}
      - {{model: {b}, layer_range: [2, 4], parameters: {{density: 0.7}}}}
      - {{model: {c}, layer_range: [2, 4]}}
    parameters: {{weight: [0.2, 0.8]}}
parameters: {{density: 0.4, weight: 0.5, normalize: true}}
""",
    "linear union": """merge_method: linear
models:
  - {{model: {x}, parameters: {{weight: 0.6}}}}
  - {{model: {y}, parameters: {{weight: 0.4}}}}
tokenizer_source: union
""",
    "ties base tokenizer": """merge_method: task_arithmetic
base_model: {x}
models:
  - {{model: {x}}}
  - {{model: {y}, parameters: {{weight: 0.5}}}}
tokenizer_source: base
""",
    "tokenizer block": """merge_method: linear
models: [{{model: {x}, parameters: {{weight: 0.5}}}}, {{model: {y}, parameters: {{weight: 0.5}}}}]
tokenizer:
  source: union
  pad_to_multiple_of: 64
  tokens:
    "<s>": {{source: {y}, force: true}}
    "<|new|>": {{source: {{kind: zero}}}}
    plus: {{source: {{kind: model_token, model: {y}, token: "</s>"}}, force: true}}
""",
    # tokenizers with added tokens beyond the model's vocab_size (no embedding rows)
    "union beyond vocab_size": """merge_method: linear
base_model: {p}
models: [{{model: {p}, parameters: {{weight: 0.5}}}}, {{model: {q}, parameters: {{weight: 0.5}}}}]
tokenizer_source: union
""",
    "base beyond vocab_size": """merge_method: linear
base_model: {p}
models: [{{model: {p}, parameters: {{weight: 0.5}}}}, {{model: {q}, parameters: {{weight: 0.5}}}}]
tokenizer_source: base
""",
    # keys without effect (hubmerge warns): the same tensors as without them
    "lenient ties": """merge_method: ties
base_model: {a}
models:
  - model: {a}
    parameters:
  - {{model: {b}, parameters: {{density: 0.5, weight: 0.7}}}}
  - {{model: {c}, parameters: {{density: 0.6, weight: 0.3, lambda: 2.0}}}}
parameters: {{normalize: true, int8_mask: true, nomalize: false}}
tokenzer_source: union
""",
    "lenient slerp": """merge_method: slerp
base_model: {a}
models: [{{model: {a}}}, {{model: {b}}}]
parameters: {{t: 0.3, embed_slerp: true}}
""",
}


def with_tokenizer(
    path: Path, *, seed: int, corpus: list[str], size: int, beyond: tuple[str, ...] = ()
) -> Path:
    """A tiny Llama with its own tokenizer; ``beyond``: added tokens past its embedding rows."""
    from transformers import AutoTokenizer

    train_tokenizer(path / "tok", vocab_size=size, corpus=corpus)
    tokenizer = AutoTokenizer.from_pretrained(path / "tok")
    tokenizer.add_tokens(list(beyond))
    rows = len(tokenizer) - len(beyond)
    build_llama(path, seed=seed, vocab=rows, tokenizer=False, layers=2, hidden=32)
    tokenizer.save_pretrained(path)
    return path


def by_token(ref: dict[str, torch.Tensor], theirs: Path, ours: Path) -> None:
    """Re-order mergekit's vocabulary rows to hubmerge's token order (mergekit's union takes
    tokens in hash order, so its ids vary between runs; hubmerge keeps the base's ids)."""
    from transformers import AutoTokenizer

    their_ids = AutoTokenizer.from_pretrained(theirs).get_vocab()
    our_ids = AutoTokenizer.from_pretrained(ours).get_vocab()
    if their_ids == our_ids or set(their_ids) != set(our_ids):
        return
    order = torch.tensor([their_ids[t] for t, _ in sorted(our_ids.items(), key=lambda kv: kv[1])])
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        rows = ref[name].clone()
        rows[: len(order)] = ref[name][order]
        ref[name] = rows


def facts(folder: Path) -> tuple[int, int, list[str]]:
    from transformers import AutoTokenizer

    config = json.loads((folder / "config.json").read_text())
    tokens = sorted(AutoTokenizer.from_pretrained(folder).get_vocab())
    return config["num_hidden_layers"], config["vocab_size"], tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mergekit", required=True, help="path to mergekit-yaml")
    parser.add_argument("--only", nargs="*", help="cases to run (substring match)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="slices-parity-"))
    a = build_llama(root / "a", seed=0, layers=4, hidden=64, vocab=256)
    models = {
        "a": a,
        "b": build_llama(root / "b", seed=1, base=a, layers=4, hidden=64, vocab=256),
        "c": build_llama(root / "c", seed=2, layers=4, hidden=64, vocab=256),
        "x": with_tokenizer(root / "x", seed=3, corpus=CORPUS, size=300),
        "y": with_tokenizer(root / "y", seed=4, corpus=ANIMALS + CORPUS[:40], size=330),
        "p": with_tokenizer(root / "p", seed=5, corpus=CORPUS, size=300, beyond=("<pa>", "<xa>")),
        "q": with_tokenizer(root / "q", seed=6, corpus=ANIMALS, size=330, beyond=("<tool>",)),
    }
    print("| case | tensors | max abs diff | max abs value | layers, vocab, tokens agree |")
    print("|---|---|---|---|---|")
    for case, body in RECIPES.items():
        if args.only and not any(o in case for o in args.only):
            continue
        recipe_file = root / f"{case.replace(' ', '-')}.yaml"
        recipe_file.write_text(body.format(**models) + "dtype: float32\n")
        theirs = root / f"mk-{recipe_file.stem}"
        subprocess.run([args.mergekit, str(recipe_file), str(theirs)], check=True,
                       capture_output=True)  # fmt: skip
        ours = merge(load_recipe(recipe_file), root / f"hm-{recipe_file.stem}").output
        ref, mine = state_dict(theirs), state_dict(ours)
        by_token(ref, theirs, ours)
        if set(ref) != set(mine):
            raise SystemExit(f"{case}: tensor names differ: {sorted(set(ref) ^ set(mine))[:5]}")
        shapes = [k for k in ref if ref[k].shape != mine[k].shape]
        if shapes:
            raise SystemExit(f"{case}: shapes differ: {shapes[:3]}")
        diff = max(float((mine[k] - ref[k]).abs().max()) for k in ref)
        scale = max(float(ref[k].abs().max()) for k in ref)
        same = facts(theirs) == facts(ours)
        print(f"| {case} | {len(ref)} | {diff:.3g} | {scale:.3g} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
