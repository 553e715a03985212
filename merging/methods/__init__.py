"""Merge methods: pure tensor functions registered by name, and how recipes bind to them.

To add a method, write ``methods/<name>.py`` with a function and its params model decorated
with `register`, then add one import line below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from merging.errors import RecipeError, RegistryError
from merging.methods import (  # noqa: F401  (registration)
    arcee_fusion,
    della,
    linear,
    model_stock,
    nearswap,
    nuslerp,
    passthrough,
    ram,
    sce,
    slerp,
    spherical,
    task_arithmetic,
)
from merging.methods._base import METHODS, Method, MethodParams, SourceParams, register
from merging.methods._ops import RandomStream
from merging.methods._spare import release_all as release_scratch
from merging.recipe import evaluate_parameter

if TYPE_CHECKING:
    from merging.recipe import ParameterValue, Recipe, SourceSpec

__all__ = [
    "METHODS",
    "Method",
    "MethodParams",
    "SourceParams",
    "get_method",
    "random_stream",
    "register",
    "release_scratch",
    "resolve_params",
]


def get_method(name: str) -> Method[Any, Any]:
    """Look a method up; unknown names raise `RecipeError` with suggestions."""
    try:
        return METHODS.get(name)
    except RegistryError as err:
        raise RecipeError(f"merge_method: {err}") from None


def _lookup(
    key: str, source: SourceSpec | None, recipe: Recipe, index: int | None
) -> ParameterValue | None:
    if source is not None and key in source.parameters:
        return source.parameters[key]
    if key == "weight" and index is not None and "weights" in recipe.parameters:
        weights = recipe.parameters["weights"]
        assert isinstance(weights, list)
        return weights[index]  # type: ignore[return-value]
    return recipe.parameters.get(key)


def resolve_params(
    method: Method[Any, Any],
    recipe: Recipe,
    sources: list[SourceSpec],
    tensor_name: str,
    t: float,
) -> tuple[MethodParams, list[SourceParams]]:
    """The method's global and per-source parameters in effect for one tensor.

    A per-source value overrides the global one of the same name (as in mergekit); gradients
    are evaluated at layer position ``t`` and filters against ``tensor_name``.
    """

    def collect(model: type[Any], source: SourceSpec | None, index: int | None) -> Any:
        values: dict[str, Any] = {}
        for name, field in model.model_fields.items():
            key = field.alias or name
            raw = _lookup(key, source, recipe, index)
            if raw is not None:
                value = evaluate_parameter(raw, tensor_name, t)
                if value is not None:
                    values[name] = value
        try:
            return model.model_validate(values)
        except ValidationError as err:
            raise RecipeError(f"parameters for tensor {tensor_name}: {err}") from None

    params = collect(method.params, None, None)
    per_source = [collect(method.source_params, s, i) for i, s in enumerate(sources)]
    return params, per_source


def random_stream(seed: int, tensor_name: str) -> RandomStream:
    """Randomness for one tensor, from ``(seed, tensor_name)``: independent of order and threads."""
    return RandomStream(seed, tensor_name)
