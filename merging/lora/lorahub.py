"""LoraHub: learn the weights of a LoRA combination from a few examples, without gradients.

Huang et al., 2023 (https://arxiv.org/abs/2307.13269): the combined adapter is A' = Σ w_i·A_i,
B' = Σ w_i·B_i (see `merging.lora.combine`); the weights w are found by a gradient-free
optimiser (nevergrad's NGOpt over [-1.5, 1.5]ⁿ, starting at 0) that minimises

    cross-entropy of the examples' outputs given their inputs  +  l1 · mean|w|.

The base is loaded once with PEFT; every step only writes the combined A and B into its LoRA
layers in place, and the examples are tokenised and batched once. Causal LMs only: the loss
counts the output tokens, not the input's.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from merging.engine import MergeOptions
from merging.errors import AdapterError
from merging.lora.adapter import LoraAdapter
from merging.lora.combine import (
    combine_adapters,
    module_factors,
    open_adapter,
    output_config,
    plan_modules,
)
from merging.lora.factors import Factors, lorahub_factors
from merging.lora.merge import merge_into_base
from merging.sources import resolve_model

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, int, float], None]  # (step, steps, objective at that step)


class Example(BaseModel):
    """One few-shot example: the model should continue ``input`` with ``output``."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    input: str
    output: str


@dataclass
class LoraHubResult:
    """Learned weights, the few-shot loss there (without the L1 term), and every step's
    objective (loss + L1 penalty) in order."""

    weights: list[float]
    loss: float
    history: list[float] = field(default_factory=list)
    output: Path | None = None


def read_examples(path: str | Path) -> list[Example]:
    """Rows of a JSON-lines file, each ``{"input": ..., "output": ...}``."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(Example.model_validate(json.loads(line)))
        except (ValueError, ValidationError) as err:
            raise AdapterError(f"{path}:{number}: not an {{input, output}} row ({err})") from None
    if not rows:
        raise AdapterError(f"{path}: no examples")
    return rows


def encode_examples(
    tokenizer: Any, examples: Sequence[Example], *, batch_size: int = 8
) -> list[dict[str, torch.Tensor]]:
    """Tokenise once into right-padded batches; labels are -100 except on output tokens."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = []
    for example in examples:
        prompt = tokenizer(example.input)["input_ids"]
        answer = tokenizer(example.output, add_special_tokens=False)["input_ids"]
        encoded.append((prompt + answer, [-100] * len(prompt) + answer))
    batches = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = [i + [pad] * (width - len(i)) for i, _ in chunk]
        labels = [lab + [-100] * (width - len(lab)) for _, lab in chunk]
        mask = [[1] * len(i) + [0] * (width - len(i)) for i, _ in chunk]
        batches.append(
            {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask),
             "labels": torch.tensor(labels)}
        )  # fmt: skip
    return batches


@torch.no_grad()
def few_shot_loss(model: Any, batches: Sequence[dict[str, torch.Tensor]]) -> float:
    """Mean cross-entropy per output token over all batches (input tokens are not counted)."""
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for batch in batches:
        logits = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
        ).logits[:, :-1]
        labels = batch["labels"][:, 1:].to(device)
        total += float(
            torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), reduction="sum"
            )
        )
        count += int((labels != -100).sum())
    return total / max(count, 1)


class _CombinedLora:
    """The base wrapped once by PEFT with one LoRA slot per module, set in place each step."""

    def __init__(self, model: Any, adapters: Sequence[LoraAdapter]) -> None:
        from peft import LoraConfig, get_peft_model

        plan = plan_modules(adapters)
        self.factors: dict[str, list[Factors | None]] = {
            target: module_factors(adapters, modules) for target, modules in plan.items()
        }
        ranks = {}
        for target, pairs in self.factors.items():
            present = {p[0].shape[0] for p in pairs if p is not None}
            if len(present) > 1:
                raise AdapterError(
                    f"lorahub needs adapters of the same rank per module; {target} has ranks "
                    f"{sorted(present)}"
                )
            ranks[target.removesuffix(".weight")] = present.pop()
        config = output_config(adapters[0], ranks, base=None, fan_in_fan_out=False)
        transposed = {m.transpose for ms in plan.values() for m in ms if m and m.kind == "linear"}
        lora_config = LoraConfig(
            r=config["r"],
            lora_alpha=config["lora_alpha"],
            rank_pattern=config["rank_pattern"],
            alpha_pattern=config["alpha_pattern"],
            target_modules=config["target_modules"],
            fan_in_fan_out=True in transposed,
            lora_dropout=0.0,
            init_lora_weights=False,
        )
        self.model: Any = get_peft_model(model, lora_config)
        self.model.eval()
        inner: Any = self.model.base_model.model
        self.layers: dict[str, Any] = {
            t: inner.get_submodule(t[: -len(".weight")]) for t in self.factors
        }

    def set_weights(self, weights: Sequence[float]) -> None:
        for target, pairs in self.factors.items():
            a, b = lorahub_factors(pairs, weights)
            layer = self.layers[target]
            assert abs(layer.scaling["default"] - 1.0) < 1e-9, "combined LoRA must have scale 1"
            with torch.no_grad():
                if "default" in getattr(layer, "lora_embedding_A", {}):
                    layer.lora_embedding_A["default"].copy_(a)
                    layer.lora_embedding_B["default"].copy_(b)
                else:
                    layer.lora_A["default"].weight.copy_(a)
                    layer.lora_B["default"].weight.copy_(b)


def lorahub_search(
    base: str | Path,
    adapters: Sequence[str | Path | LoraAdapter],
    examples: Sequence[Example] | str | Path,
    *,
    steps: int = 40,
    seed: int = 0,
    l1: float = 0.05,
    bound: float = 1.5,
    batch_size: int = 8,
    device: str = "cpu",
    progress: StepCallback | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> LoraHubResult:
    """Find LoraHub weights for ``adapters`` on ``base`` from few-shot examples.

    Args:
        base (`str`): the base model (folder or Hub ref), a causal LM.
        adapters: LoRA adapters of that base, with equal ranks per module.
        examples: `Example`s, or a JSON-lines file of ``{"input", "output"}`` rows.
        steps (`int`, *optional*): optimiser budget (forward passes over the examples).
        seed (`int`, *optional*): seeds the optimiser; equal seeds give equal results.
        l1 (`float`, *optional*): weight of the penalty mean|w| added to the loss.
        bound (`float`, *optional*): each weight stays in [-bound, bound].
        progress (`Callable[[int, int, float], None]`, *optional*): called after every step.

    Returns:
        `LoraHubResult` with the recommended weights and their few-shot loss.

    Example:
        >>> lorahub_search("org/base", ["org/a", "org/b"], "shots.jsonl")  # doctest: +SKIP
    """
    import nevergrad as ng
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer


    rows = read_examples(examples) if isinstance(examples, (str, Path)) else list(examples)
    loaded = [open_adapter(a, token=token, endpoint=endpoint) for a in adapters]
    path = resolve_model(str(base), token=token, endpoint=endpoint).path
    tokenizer = AutoTokenizer.from_pretrained(path)
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.to(device)
    combined = _CombinedLora(model, loaded)
    batches = encode_examples(tokenizer, rows, batch_size=batch_size)

    def objective(weights: np.ndarray) -> float:
        combined.set_weights([float(w) for w in weights])
        return few_shot_loss(combined.model, batches) + l1 * float(np.abs(weights).mean())

    parametrization = ng.p.Array(init=np.zeros(len(loaded)), lower=-bound, upper=bound)
    parametrization.random_state = np.random.RandomState(seed)
    optimizer = ng.optimizers.NGOpt(parametrization=parametrization, budget=steps)
    history = []
    for step in range(1, steps + 1):
        candidate = optimizer.ask()
        value = objective(candidate.value)
        optimizer.tell(candidate, value)
        history.append(value)
        logger.info("lorahub step %d/%d: objective %.4f", step, steps, value)
        if progress is not None:
            progress(step, steps, value)
    weights = [float(w) for w in optimizer.provide_recommendation().value]
    combined.set_weights(weights)
    loss = few_shot_loss(combined.model, batches)
    logger.info("lorahub weights %s, few-shot loss %.4f", weights, loss)
    return LoraHubResult(weights, loss, history)


def lorahub(
    base: str | Path,
    adapters: Sequence[str | Path],
    examples: Sequence[Example] | str | Path,
    output: str | Path,
    *,
    merge: bool = False,
    overwrite: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    **search: Any,
) -> LoraHubResult:
    """Search LoraHub weights, then write the combined adapter (or, with ``merge``, the base
    with it merged in) to ``output``. ``search`` takes `lorahub_search`'s options."""
    result = lorahub_search(base, adapters, examples, token=token, endpoint=endpoint, **search)

    def combine(target: Path, *, overwrite: bool) -> Path:
        return combine_adapters(
            adapters, target, method="lorahub", weights=result.weights, base=str(base),
            token=token, endpoint=endpoint, overwrite=overwrite,
        ).output  # fmt: skip

    if not merge:
        result.output = combine(Path(output), overwrite=overwrite)
        return result

    with tempfile.TemporaryDirectory(prefix="hubmerge-lorahub-") as tmp:
        adapter_dir = combine(Path(tmp) / "adapter", overwrite=False)
        options = MergeOptions(overwrite=overwrite, token=token, endpoint=endpoint, device="cpu")
        result.output = merge_into_base(base, adapter_dir, output, options=options).output
    return result


__all__ = [
    "Example",
    "LoraHubResult",
    "encode_examples",
    "few_shot_loss",
    "lorahub",
    "lorahub_search",
    "read_examples",
]
