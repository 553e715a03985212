"""Greedy soup (Wortsman et al., 2022, https://arxiv.org/abs/2203.05482), composed from
`merging.merge` and the evaluation package's fast scorer.

Ingredients are ordered by their own held-out score, best first. The soup starts as the best
ingredient; each next one is tried as a uniform `linear` soup with the current members and
kept only if the held-out score does not get worse. Every ingredient is loaded once into the
search's `InMemoryEvaluator`; each candidate soup is merged into its resident model in place
and scored there (nothing is written per candidate). Only the final soup goes through the
streamed `merging.merge`.

>>> result = greedy_soup(["org/ft-a", "org/ft-b"], examples, output="out/soup")  # doctest: +SKIP
>>> [(step.ingredient, step.kept) for step in result.steps]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from merging import MergeOptions, Recipe, merge, parse_recipe
from merging.errors import MergeCancelled, RecipeError

logger = logging.getLogger(__name__)

Report = Callable[[str], None]


@dataclass(frozen=True)
class SoupStep:
    """One decision: the ingredient tried, the candidate soup's score, whether it was kept."""

    ingredient: str
    score: float
    kept: bool
    members: tuple[str, ...]


@dataclass
class SoupResult:
    """The final soup and the path taken to it.

    Attributes:
        recipe: the `linear` recipe of the final soup (reproducible with `hubmerge merge`).
        output: where the merged soup was written.
        individual: each ingredient's own held-out score.
        steps: the greedy decisions, in order (the first is the best single ingredient).
        metric: the scoring metric; ``higher_is_better`` says which way is better.
    """

    recipe: Recipe
    output: Path
    individual: dict[str, float]
    steps: list[SoupStep] = field(default_factory=list)
    metric: str = "loss"
    higher_is_better: bool = False

    @property
    def members(self) -> tuple[str, ...]:
        return self.steps[-1].members if self.steps else ()

    @property
    def score(self) -> float:
        kept = [s for s in self.steps if s.kept]
        return kept[-1].score if kept else float("nan")

    def describe(self) -> str:
        lines = [f"greedy soup by held-out {self.metric}:"]
        for step in self.steps:
            verdict = "kept" if step.kept else "rejected"
            lines.append(f"  {step.ingredient}: {self.metric} {step.score:.4f} → {verdict}")
        lines.append("final soup: " + ", ".join(self.members))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "individual": self.individual,
            "steps": [step.__dict__ | {"members": list(step.members)} for step in self.steps],
            "members": list(self.members),
            "score": self.score,
            "recipe": self.recipe.to_yaml(),
            "output": str(self.output),
        }


def soup_recipe(members: Sequence[str], *, template: Recipe | None = None) -> Recipe:
    """A uniform `linear` recipe of `members` (dtype and options copied from `template`)."""
    data: dict[str, Any] = {}
    if template is not None:
        data = template.model_dump(mode="json", exclude_defaults=True, exclude={"models"})
        data.pop("base_model", None)
        data.pop("parameters", None)
    data.update(merge_method="linear", models=[{"model": m} for m in members])
    return parse_recipe(data)


def greedy_soup(
    ingredients: Sequence[str],
    examples: Sequence[Any],
    *,
    output: str | Path,
    metric: str = "loss",
    template: Recipe | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    device: str = "cpu",
    cancel: threading.Event | None = None,
    log: Report | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SoupResult:
    """Build a greedy soup of `ingredients` scored on held-out `examples`.

    Args:
        ingredients (`Sequence[str]`): model references (Hub ids or local folders) with the
            same architecture, e.g. fine-tunes of one base.
        examples (`Sequence`): held-out `evaluation.scoring.Example` rows (or dicts).
        output (`str` or `Path`): where the final soup is written (must not exist).
        metric (`str`): ``"loss"`` (lower is better), ``"exact_match"`` or
            ``"multiple_choice"``.
        template (`Recipe`, *optional*): dtype and other options for the soup recipes.
        token, endpoint: for Hub ingredients; the token is passed per call, never stored.
        cancel (`threading.Event`, *optional*): stop between steps and inside merges.

    Returns:
        `SoupResult` with the recipe of the final soup and the path taken.

    Raises:
        `RecipeError`: fewer than two ingredients; `MergeCancelled`; merge and scoring errors.
    """
    from app.search.evaluator import InMemoryEvaluator
    from evaluation.scoring import as_examples, higher_is_better

    if len(dict.fromkeys(ingredients)) < 2:
        raise RecipeError("a greedy soup needs at least two distinct ingredient models")
    ingredients = list(dict.fromkeys(ingredients))
    rows = as_examples(examples)
    better_high = higher_is_better(metric)  # type: ignore[arg-type]
    say = log or (lambda message: logger.info("%s", message))
    output = Path(output)
    if output.exists():
        raise RecipeError(f"output {output} already exists")
    total = len(ingredients) * 2 - 1
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)
        if cancel is not None and cancel.is_set():
            raise MergeCancelled("greedy soup cancelled; nothing was kept")

    def better_or_equal(new: float, old: float) -> bool:
        return new >= old if better_high else new <= old

    evaluator = InMemoryEvaluator(soup_recipe(ingredients, template=template), rows,
                                  metric=metric, device=device, token=token,
                                  endpoint=endpoint)  # fmt: skip
    individual: dict[str, float] = {}
    for name in ingredients:
        individual[name] = evaluator.score(soup_recipe([name], template=template))
        say(f"{name}: held-out {metric} {individual[name]:.4f}")
        tick()
    order = sorted(ingredients, key=individual.__getitem__, reverse=better_high)
    members = [order[0]]
    best = individual[order[0]]
    steps = [SoupStep(order[0], best, True, (order[0],))]
    for name in order[1:]:
        candidate = [*members, name]
        value = evaluator.score(soup_recipe(candidate, template=template))
        kept = better_or_equal(value, best)
        if kept:
            members, best = candidate, value
        steps.append(SoupStep(name, value, kept, tuple(members)))
        say(f"+ {name}: soup {metric} {value:.4f} → {'kept' if kept else 'rejected'}")
        tick()
    del evaluator
    recipe = soup_recipe(members, template=template)
    options = MergeOptions(token=token, endpoint=endpoint, cancel=cancel, device=device)
    merge(recipe, output, options=options)
    return SoupResult(recipe, output, individual, steps, metric, better_high)
