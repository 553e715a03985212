"""A fast scorer for inner loops (greedy soups, LoraHub, the interpolation probe).

The model stays loaded and examples are scored in batches with one forward pass each, so
scoring a handful of examples costs milliseconds instead of the harness's per-call setup.

Examples are jsonl rows ``{"input": ..., "output": ...}``, optionally with ``"choices"``
(the output must be one of them) for multiple-choice accuracy. The input is encoded with the
tokenizer's special tokens (BOS), the output without, and the two are concatenated:

* `Scorer.loss`: mean cross-entropy per *output* token (input tokens are never counted);
* `Scorer.exact_match`: fraction of examples whose output is the greedy continuation of
  the input (checked teacher-forced, like lm-eval's ``is_greedy``, without generating);
* `Scorer.multiple_choice`: fraction where the output has the highest log-likelihood among
  the choices (summed over tokens, as the harness's ``acc``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from evaluation.errors import DataError
from evaluation.loading import input_device, load_model, load_tokenizer

Metric = Literal["loss", "exact_match", "multiple_choice"]


class Example(BaseModel):
    """One scoring example: `input` is the prompt, `output` the expected continuation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: str
    output: str
    choices: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _output_among_choices(self) -> Example:
        if self.choices is not None and self.output not in self.choices:
            raise ValueError(f"output {self.output!r} is not one of the choices {self.choices}")
        return self


def load_examples(path: str | Path) -> list[Example]:
    """Read a jsonl file of examples.

    Raises:
        [`DataError`]: a line is not JSON or not a valid example (the message names the line).
    """
    examples = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            examples.append(Example.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValidationError) as err:
            raise DataError(f"{path}:{number}: not a valid example: {err}") from None
    if not examples:
        raise DataError(f"{path} holds no examples")
    return examples


def as_examples(rows: Iterable[Example | dict[str, Any]]) -> list[Example]:
    return [row if isinstance(row, Example) else Example.model_validate(row) for row in rows]


class Continuation(BaseModel):
    """Scores of one output after one input: summed log-probability, token count, greedy."""

    model_config = ConfigDict(frozen=True)

    logprob: float
    num_tokens: int
    is_greedy: bool


class Scorer:
    """Scores examples with a loaded causal LM.

    Args:
        model (`PreTrainedModel`): a causal LM in eval mode.
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer.
        batch_size (`int`): sequences per forward pass.
        max_length (`int`, *optional*): longest sequence; longer inputs lose their start
            (default: the model's ``max_position_embeddings``, else 2048).

    >>> scorer = Scorer.from_pretrained("out/merge", device="cpu")  # doctest: +SKIP
    >>> scorer.loss([{"input": "The capital of France is", "output": " Paris"}])  # doctest: +SKIP
    """

    def __init__(
        self, model: Any, tokenizer: Any, *, batch_size: int = 8, max_length: int | None = None
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        limit = max_length or getattr(model.config, "max_position_embeddings", None) or 2048
        self.max_length: int = int(limit)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        trust_remote_code: bool = False,
    ) -> Scorer:
        """Load the model and tokenizer at `path` once and keep them."""
        model = load_model(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, batch_size=batch_size)

    def encode(self, text: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of the input (with special tokens) and of the continuation (without)."""
        context = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        output = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not output:
            raise DataError(f"output {continuation!r} encodes to no tokens")
        if not context:  # a tokenizer without BOS and an empty input: predict from EOS
            context = [int(self.tokenizer.eos_token_id)]
        keep = self.max_length - len(output)
        if keep < 1:
            raise DataError(f"output of {len(output)} tokens exceeds max_length {self.max_length}")
        return context[-keep:], output

    def continuations(self, pairs: Sequence[tuple[str, str]]) -> list[Continuation]:
        """Log-probability, token count and greedy flag of each (input, output) pair."""
        import torch

        encoded = [self.encode(text, output) for text, output in pairs]
        device = input_device(self.model)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        scores: list[Continuation] = []
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start : start + self.batch_size]
            width = max(len(c) + len(o) for c, o in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (context, output) in enumerate(batch):
                ids[row, : len(context) + len(output)] = torch.tensor(context + output)
                mask[row, : len(context) + len(output)] = 1
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            log_probs = torch.log_softmax(logits.float(), dim=-1).cpu()
            for row, (context, output) in enumerate(batch):
                # logits at position t predict token t + 1
                positions = torch.arange(len(context) - 1, len(context) + len(output) - 1)
                target = torch.tensor(output)
                step = log_probs[row, positions]
                scores.append(
                    Continuation(
                        logprob=float(step.gather(1, target[:, None]).sum()),
                        num_tokens=len(output),
                        is_greedy=bool((step.argmax(dim=-1) == target).all()),
                    )
                )
        return scores

    def loss(self, examples: Iterable[Example | dict[str, Any]]) -> float:
        """Mean cross-entropy (nats) per output token over all examples."""
        scored = self.continuations([(e.input, e.output) for e in as_examples(examples)])
        if not scored:
            raise DataError("no examples to score")
        return -sum(s.logprob for s in scored) / sum(s.num_tokens for s in scored)

    def exact_match(self, examples: Iterable[Example | dict[str, Any]]) -> float:
        """Fraction of examples whose output is exactly the model's greedy continuation."""
        scored = self.continuations([(e.input, e.output) for e in as_examples(examples)])
        if not scored:
            raise DataError("no examples to score")
        return sum(s.is_greedy for s in scored) / len(scored)

    def multiple_choice(self, examples: Iterable[Example | dict[str, Any]]) -> float:
        """Fraction of examples whose output is the most likely of their `choices`."""
        examples = as_examples(examples)
        if not examples:
            raise DataError("no examples to score")
        if any(e.choices is None for e in examples):
            raise DataError("multiple-choice scoring needs `choices` on every example")
        pairs = [(e.input, choice) for e in examples for choice in e.choices or ()]
        scored = iter(self.continuations(pairs))
        correct = 0
        for example in examples:
            choices = example.choices or ()
            logprobs = [next(scored).logprob for _ in choices]
            best = max(range(len(choices)), key=logprobs.__getitem__)
            correct += choices[best] == example.output
        return correct / len(examples)

    def score(self, examples: Iterable[Example | dict[str, Any]], *, metric: Metric) -> float:
        """One number for `examples`: ``loss`` (lower is better) or an accuracy."""
        scorers = {
            "loss": self.loss,
            "exact_match": self.exact_match,
            "multiple_choice": self.multiple_choice,
        }
        if metric not in scorers:
            raise DataError(f"unknown metric {metric!r}; use one of {sorted(scorers)}")
        return scorers[metric](examples)


def higher_is_better(metric: Metric) -> bool:
    """Whether a larger `Scorer.score` is better for `metric`."""
    return metric != "loss"


def perplexity(loss: float) -> float:
    """exp(loss), capped to stay finite."""
    return math.exp(min(loss, 700.0))
