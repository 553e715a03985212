"""The first candidates of a search: the user's recipe and the usual fixed recipes over the
same models (deduplicated by what they do, so the same merge is never scored twice)."""

from __future__ import annotations

from typing import Any

from app.search.space import Layout, SearchSpace
from merging import Recipe, get_method, parse_recipe


def fixed_recipes(recipe: Recipe) -> list[tuple[str, Recipe]]:
    """The user's recipe and the usual fixed recipes over the same models: task arithmetic
    (λ = 0.5 and 1) and TIES (density 0.5) when there is a base, and the uniform soup."""
    space = SearchSpace(recipe, Layout())
    common = recipe.model_dump(mode="json", exclude_defaults=True,
                               exclude={"merge_method", "models", "parameters"})  # fmt: skip
    inputs = [{"model": recipe.models[j].model, **({"adapter": recipe.models[j].adapter}
               if recipe.models[j].adapter else {})} for j in space.positions]  # fmt: skip
    found: list[tuple[str, Any]] = [("your recipe", recipe)]
    if recipe.base_model:
        found += [
            ("task arithmetic λ=0.5", {"merge_method": "task_arithmetic",
                                       "parameters": {"lambda": 0.5}}),
            ("task arithmetic λ=1", {"merge_method": "task_arithmetic",
                                     "parameters": {"lambda": 1.0}}),
            ("TIES density=0.5", {"merge_method": "ties", "parameters": {"density": 0.5}}),
        ]  # fmt: skip
    found.append(("uniform soup", {"merge_method": "linear"}))
    out: list[tuple[str, Recipe]] = []
    seen: set[Any] = set()
    for label, item in found:
        candidate = item if isinstance(item, Recipe) else parse_recipe(
            {**common, **item, "models": inputs})  # fmt: skip
        key = _effective(candidate)
        if key not in seen:
            seen.add(key)
            out.append((label, candidate))
    return out


_PROBES = [("model.layers.0.self_attn.q_proj.weight", 0.0),
           ("model.layers.9.mlp.down_proj.weight", 1.0)]  # fmt: skip


def _effective(recipe: Recipe) -> Any:
    """What a recipe does, defaults filled in (so ``lambda: 1`` equals no ``lambda``)."""
    from merging.methods import resolve_params
    from merging.plan import merge_inputs

    method = get_method(recipe.merge_method)
    specs = merge_inputs(method, recipe)
    resolved = []
    for name, t in _PROBES:
        params, per_source = resolve_params(method, recipe, specs, name, t)
        resolved.append((params.model_dump_json(), tuple(p.model_dump_json() for p in per_source)))
    rest = recipe.model_dump_json(exclude={"parameters", "models"})
    return (rest, tuple((s.model, s.adapter) for s in specs), tuple(resolved))
