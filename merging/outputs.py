"""The files written beside the merged tensors: config (following the plan), generation config,
tokenizer (with its chat template), the recipe and the model card."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from merging.card import render_card
from merging.check import CompatibilityReport
from merging.io.headers import SourceInfo
from merging.io.writer import ShardWriter
from merging.plan import TensorPlan
from merging.recipe import Recipe
from merging.sources import ResolvedModel
from merging.tokenizer import Vocab, write_tokenizer

RECIPE_FILE = "hubmerge_recipe.yaml"  # the recipe as merged, beside every output
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)  # fmt: skip


def config_dtype(config: dict[str, Any]) -> str | None:
    value = config.get("torch_dtype") or config.get("dtype")
    return value if value in TORCH_DTYPES else None


@dataclass(frozen=True)
class Extras:
    """What the extra files are made from."""

    recipe: Recipe
    method: Any
    plan: TensorPlan
    infos: dict[str, SourceInfo]
    resolved: dict[str, ResolvedModel]
    report: CompatibilityReport
    out_dtype: str
    copy_tokenizer: bool = True  # (`MergeOptions.copy_tokenizer`)

    def path_of(self, key: str) -> Path:
        return self.resolved[self.plan.sources[key].model].path if key in self.plan.sources else (
            self.resolved[key].path
        )


def write_extras(writer: ShardWriter, extras: Extras, vocab: Vocab | None) -> None:
    recipe, plan, report = extras.recipe, extras.plan, extras.report
    reference = extras.infos[plan.reference]
    if reference.config:
        config = plan.output_config(reference.config, extras.infos)
        config["torch_dtype"] = extras.out_dtype
        if "dtype" in config:
            config["dtype"] = extras.out_dtype
        rows = {h.shape[0] for h in report.output if h.name.endswith("embed_tokens.weight")}
        if vocab is not None and "vocab_size" in config:
            config["vocab_size"] = vocab.rows
        elif rows and "vocab_size" in config:
            config["vocab_size"] = max(rows)
        writer.add_file("config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    reference_dir = extras.path_of(plan.reference)
    if (reference_dir / "generation_config.json").is_file():
        writer.copy_file(reference_dir / "generation_config.json")
    donor = recipe.base_model or plan.reference
    if vocab is None and not extras.copy_tokenizer:  # nothing built, nothing copied
        if recipe.chat_template:
            report.warnings.append(
                "chat_template: not written (no tokenizer is copied into the output: "
                "copy_tokenizer is off)"
            )
    else:
        tokenizer_files = write_tokenizer(
            recipe, vocab, extras.path_of(donor), {k: extras.path_of(k) for k in plan.sources}
        )
        if tokenizer_files is None:
            for name in TOKENIZER_FILES:
                if (reference_dir / name).is_file():
                    writer.copy_file(reference_dir / name)
        else:
            for name, content in tokenizer_files.items():
                writer.add_file(name, content)
    first = plan.tensors[0] if plan.tensors else None
    params = first.params if first is not None else None
    writer.add_file(RECIPE_FILE, recipe.to_yaml())
    writer.add_file(
        "README.md",
        render_card(
            recipe, extras.method, params, extras.resolved, out_dtype=extras.out_dtype,
            warnings=report.warnings, plan=plan.summary(),
        ),
    )  # fmt: skip


__all__ = [
    "RECIPE_FILE", "TOKENIZER_FILES", "TORCH_DTYPES", "Extras", "config_dtype", "write_extras",
]  # fmt: skip
