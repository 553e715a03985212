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
    ram,
    sce,
    slerp,
    spherical,
    task_arithmetic,
)
from merging.methods._base import METHODS, Method, MethodParams, SourceParams, register
from merging.methods._ops import RandomStream
from merging.recipe import Conditional, evaluate_parameter, scalars_of

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
    "resolve_params",
    "validate_recipe_parameters",
]


def get_method(name: str) -> Method[Any, Any]:
    """Look a method up; unknown names raise `RecipeError` with suggestions."""
    try:
        return METHODS.get(name)
    except RegistryError as err:
        raise RecipeError(f"merge_method: {err}") from None


def _field_info(method: Method[Any, Any], key: str) -> tuple[type[Any], str] | None:
    for model in (method.source_params, method.params):
        for name, field in model.model_fields.items():
            if key in (name, field.alias):
                return model, name
    return None


def _check_value(method: Method[Any, Any], where: str, key: str, value: ParameterValue) -> None:
    found = _field_info(method, key)
    if found is None:
        allowed = ", ".join(sorted(method.parameter_names())) or "(none)"
        raise RecipeError(f"{where}.{key}: unknown parameter for {method.name}; allowed: {allowed}")
    model, name = found
    for scalar in scalars_of(value):
        try:
            model.model_validate({name: scalar, **_required_stub(model, name)})
        except ValidationError as err:
            problem = next(e for e in err.errors() if e["loc"] and e["loc"][0] == name)
            raise RecipeError(f"{where}.{key} = {scalar!r}: {problem['msg']}") from None


def _required_stub(model: type[Any], skip: str) -> dict[str, Any]:
    """Placeholder values for the other required fields, so one field validates alone."""
    return {
        name: 0.5
        for name, field in model.model_fields.items()
        if field.is_required() and name != skip
    }


def validate_recipe_parameters(recipe: Recipe) -> None:
    """Check method, base and every parameter of a recipe before any tensor is read.

    Raises:
        `RecipeError`: naming the offending key and the allowed values.
    """
    method = get_method(recipe.merge_method)
    inputs = recipe.inputs() if method.needs_base else list(recipe.models)
    if method.needs_base and recipe.base_model is None:
        raise RecipeError(f"base_model: {method.name} needs a base model")
    if len(inputs) < method.min_inputs:
        raise RecipeError(
            f"models: {method.name} needs at least {method.min_inputs} model(s) besides the base"
        )
    if method.max_inputs is not None and len(inputs) > method.max_inputs:
        raise RecipeError(
            f"models: {method.name} takes exactly {method.max_inputs} model(s) besides the base "
            f"(got {len(inputs)}: {', '.join(s.model for s in inputs)})"
        )
    for key, value in recipe.parameters.items():
        if key == "weights":
            _check_weight_list(value, len(inputs))
            continue
        _check_value(method, "parameters", key, value)
    source_keys = set(method.source_params.model_fields)
    for index, source in enumerate(recipe.models):
        for key, value in source.parameters.items():
            if key not in source_keys:
                allowed = ", ".join(sorted(source_keys))
                raise RecipeError(
                    f"models[{index}].parameters.{key}: not a per-model parameter of "
                    f"{method.name}; allowed: {allowed}"
                )
            _check_value(method, f"models[{index}].parameters", key, value)
    for name, field in method.params.model_fields.items():
        key = field.alias or name
        if field.is_required() and key not in recipe.parameters:
            raise RecipeError(f"parameters.{key}: required by {method.name}")
        if field.is_required() and not _has_fallback(recipe.parameters[key]):
            raise RecipeError(
                f"parameters.{key}: required by {method.name}, so its list of filters needs a "
                "last entry without a filter (the value for every other tensor)"
            )


def _has_fallback(value: ParameterValue) -> bool:
    if not isinstance(value, list) or not value or not isinstance(value[0], Conditional):
        return True
    return any(c.filter in (None, "*") for c in value if isinstance(c, Conditional))


def _check_weight_list(value: ParameterValue, n_inputs: int) -> None:
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) for v in value):
        raise RecipeError("parameters.weights: must be a list with one number per model")
    if len(value) != n_inputs:
        raise RecipeError(
            f"parameters.weights: has {len(value)} values but the recipe has {n_inputs} model(s)"
        )


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
