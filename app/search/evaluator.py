"""Score candidate recipes in memory: the inputs are loaded once, each candidate is merged
straight into a resident model's parameters and scored on the selection examples.

Nothing is written to disk per candidate. Each tensor is merged with the method's pure
function (the same function the streamed engine's chunked kernels are tested against), then
cast to the recipe's output dtype and back, so the score is the one the written merge gets
when it is loaded in float32.

>>> evaluator = InMemoryEvaluator(recipe, examples, device="cpu")  # doctest: +SKIP
>>> evaluator.score(candidate_recipe)  # doctest: +SKIP
0.8123
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from app.search.errors import SearchError
from merging import Recipe, get_method
from merging.engine import TORCH_DTYPES, layer_position
from merging.methods import random_stream, resolve_params
from merging.plan import merge_inputs, takes_base
from merging.sources import ResolvedModel, open_source, resolve_model

logger = logging.getLogger(__name__)


def source_key(model: str, adapter: str | None) -> str:
    return model + (f"+{adapter}" if adapter else "")


def examples_hash(rows: Iterable[Any]) -> str:
    """sha256 of the examples as canonical JSON lines (what the card records)."""
    digest = hashlib.sha256()
    for row in rows:
        data = row.model_dump(exclude_none=True) if hasattr(row, "model_dump") else dict(row)
        data = {k: v for k, v in data.items() if v is not None}
        digest.update(json.dumps(data, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


class InMemoryEvaluator:
    """The base and every input of a recipe, loaded once, and one resident model to score in.

    Args:
        recipe (`Recipe`): names the base and the inputs every candidate draws from (candidate
            recipes may use any method over these sources).
        examples: `evaluation.scoring.Example` rows (or ``{"input", "output"}`` dicts).
        metric (`str`): ``"loss"`` (mean output-token cross-entropy, lower is better),
            ``"exact_match"`` or ``"multiple_choice"``.
        device (`str`): where the resident model and the merge arithmetic run.
        token, endpoint: for Hub sources; the token is used per call and never kept.
    """

    def __init__(
        self,
        recipe: Recipe,
        examples: Sequence[Any],
        *,
        metric: str = "loss",
        device: str = "cpu",
        token: str | None = None,
        endpoint: str | None = None,
        batch_size: int = 8,
    ) -> None:
        from app.search.tasks import split_tasks
        from evaluation.loading import load_model, load_tokenizer
        from evaluation.scoring import Scorer

        started = time.perf_counter()
        self.rows, self.tasks = split_tasks(examples)
        if not self.rows:
            raise SearchError("the search needs at least one example")
        if metric not in METRICS:
            raise SearchError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
        if metric == "worst_gap" and self.tasks is None:
            raise SearchError('worst_gap needs examples that name their task ({"task": …})')
        self.metric = metric
        self.recipe = recipe
        self.device = torch.device(device)
        self.resolved = _resolve(recipe, token=token, endpoint=endpoint)
        specs: dict[str, Any] = {}
        if recipe.base_model:
            specs[recipe.base_model] = recipe.base_model
        for spec in recipe.models:
            specs.setdefault(source_key(spec.model, spec.adapter), spec)
        sources = {}
        for key, spec in specs.items():
            model = spec if isinstance(spec, str) else spec.model
            adapter = None if isinstance(spec, str) or not spec.adapter else spec.adapter
            sources[key] = open_source(spec, self.resolved[model],
                                       self.resolved[adapter] if adapter else None,
                                       allow_pickle=recipe.allow_pickle)  # fmt: skip
        reference_key = recipe.base_model or source_key(recipe.models[0].model,
                                                        recipe.models[0].adapter)  # fmt: skip
        reference = sources[reference_key]
        self.config = reference.config
        self.model = load_model(self.resolved[recipe.base_model or recipe.models[0].model].path,
                                device=device, dtype="float32")  # fmt: skip
        tokenizer_from = self.resolved[recipe.base_model or recipe.models[0].model].path
        self.scorer = Scorer(self.model, load_tokenizer(tokenizer_from), batch_size=batch_size)
        targets = dict(self.model.named_parameters(remove_duplicate=False))
        self.targets: dict[str, torch.Tensor] = {}
        self.tensors: dict[str, dict[str, torch.Tensor]] = {key: {} for key in sources}
        shapes_differ = []
        for name, header in reference.headers.items():
            if name not in targets:
                continue
            if header.dtype not in ("F32", "F16", "BF16"):
                continue
            for key, source in sources.items():
                if name not in source.headers:
                    raise SearchError(f"{source.label} has no tensor {name}")
                tensor = source.get(name).to(device=self.device, dtype=torch.float32)
                if tuple(tensor.shape) != tuple(targets[name].shape):
                    shapes_differ.append(name)
                self.tensors[key][name] = tensor
            self.targets[name] = targets[name]
        if shapes_differ:
            raise SearchError(f"the search needs inputs of equal shapes; {shapes_differ[0]} "
                              "differs (vocabulary policies are not searched)")  # fmt: skip
        if not self.targets:
            raise SearchError("no tensor of the checkpoints matches the model's parameters")
        self.num_layers = _num_layers(reference.config, list(self.targets))
        self.reference = None
        if metric == "worst_gap":
            from app.search.tasks import measure_reference

            assert self.tasks is not None
            self.reference = measure_reference(self, self.rows, self.tasks)
        self.load_seconds = time.perf_counter() - started
        logger.info("search evaluator: %d tensors of %d sources resident in %.1f s",
                    len(self.targets), len(sources), self.load_seconds)  # fmt: skip

    @property
    def pinned(self) -> dict[str, str]:
        return {name: model.pinned for name, model in self.resolved.items()}

    def apply(self, recipe: Recipe) -> float:
        """Write the merge of `recipe` into the resident model; returns the seconds it took."""
        started = time.perf_counter()
        method = get_method(recipe.merge_method)
        specs = merge_inputs(method, recipe)  # as the engine's plan: karcher counts a base
        with_base = takes_base(method, recipe.base_model)
        keys = [source_key(s.model, s.adapter) for s in specs]
        missing = [k for k in [*keys, *([recipe.base_model] if with_base else [])]
                   if k not in self.tensors]  # fmt: skip
        if missing:
            raise SearchError(f"candidate uses {missing[0]}, which the evaluator did not load")
        out_dtype = TORCH_DTYPES[recipe.output_dtype(_config_dtype(self.config))]
        compute = TORCH_DTYPES[recipe.compute_dtype]
        with torch.no_grad():
            for name, target in self.targets.items():
                t = layer_position(name, self.num_layers)
                params, per_source = resolve_params(method, recipe, specs, name, t)
                inputs = [self.tensors[k][name].to(compute) for k in keys]
                base = self.tensors[str(recipe.base_model)][name].to(compute) \
                    if with_base else None  # fmt: skip
                merged = method.fn(base, inputs, per_source, params,
                                   random_stream(recipe.seed, name))  # fmt: skip
                target.copy_(merged.to(out_dtype).to(target.dtype))
        return time.perf_counter() - started

    def score_current(self) -> float:
        """The metric of the model as it is now."""
        return score_with(self.scorer, self.rows, self.metric, tasks=self.tasks,
                          reference=self.reference)  # fmt: skip

    def score(self, recipe: Recipe) -> float:
        """Merge `recipe` in place and score it."""
        self.apply(recipe)
        return self.score_current()

    def score_rows(self, recipe: Recipe, rows: Sequence[Any]) -> float:
        """Score `recipe` on other examples (a held-out test split; for ``worst_gap`` the
        base's and the inputs' losses are measured on those examples too)."""
        from app.search.tasks import measure_reference, split_tasks

        plain, tasks = split_tasks(rows)
        reference = None
        if self.metric == "worst_gap":
            if tasks is None:
                raise SearchError("worst_gap needs examples that name their task")
            reference = measure_reference(self, plain, tasks)
        self.apply(recipe)
        return score_with(self.scorer, plain, self.metric, tasks=tasks, reference=reference)


def score_folder(path: str | Path, examples: Sequence[Any], *, metric: str = "loss",
                 device: str = "cpu", reference: Any = None) -> float:  # fmt: skip
    """Score a written model folder (loaded in float32), e.g. to check the winner reproduces
    (``worst_gap`` takes the search's `TaskReference`)."""
    from app.search.tasks import split_tasks
    from evaluation.scoring import Scorer

    plain, tasks = split_tasks(examples)
    scorer = Scorer.from_pretrained(path, device=device, dtype="float32")
    return score_with(scorer, plain, metric, tasks=tasks, reference=reference)


METRICS = ("loss", "example_loss", "worst_gap", "exact_match", "multiple_choice")


def higher_is_better(metric: str) -> bool:
    """Accuracies are better higher, losses lower."""
    return metric in ("exact_match", "multiple_choice")


def score_with(scorer: Any, rows: Sequence[Any], metric: str, *,
               tasks: Sequence[str] | None = None, reference: Any = None) -> float:  # fmt: skip
    """One number for `rows`: the scorer's metrics; ``example_loss``, the mean over examples
    of each one's mean output-token loss (every example weighs the same, whatever its length;
    ``loss`` weighs every output token the same); ``worst_gap`` (`app.search.tasks`)."""
    if metric not in METRICS:
        raise SearchError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    if metric == "worst_gap":
        from app.search.tasks import task_losses

        if tasks is None or reference is None:
            raise SearchError("worst_gap needs tasks on the examples and the search's reference")
        return float(reference.worst_gap(task_losses(scorer, rows, tasks)))
    if metric != "example_loss":
        return float(scorer.score(rows, metric=metric))
    scored = scorer.continuations([(row.input, row.output) for row in rows])
    return -sum(s.logprob / s.num_tokens for s in scored) / len(scored)


def _resolve(
    recipe: Recipe, *, token: str | None, endpoint: str | None
) -> dict[str, ResolvedModel]:
    names = [recipe.base_model] if recipe.base_model else []
    names += [s.model for s in recipe.models] + [s.adapter for s in recipe.models if s.adapter]
    return {name: resolve_model(name, token=token, endpoint=endpoint,
                                allow_pickle=recipe.allow_pickle)
            for name in dict.fromkeys(names)}  # fmt: skip


def _config_dtype(config: dict[str, Any]) -> str | None:
    value = config.get("torch_dtype") or config.get("dtype")
    return value if value in TORCH_DTYPES else None


def _num_layers(config: dict[str, Any], names: list[str]) -> int:
    from merging.engine import layer_index

    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return int(config[key])
    found = [i for i in map(layer_index, names) if i is not None]
    return max(found) + 1 if found else 1
