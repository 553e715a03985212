"""Bind a recipe to its method, before any tensor is read: the method exists, the base and the
inputs fit it (per slice, too), every parameter value is in range; keys that have no effect
become warnings, or errors under ``strict``.

`parse_recipe` / `load_recipe` here are the public ones (``from merging import load_recipe``):
syntax (`merging.recipe`) plus this binding. `merging.recipe` never imports the methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from merging._recipe_keys import did_you_mean
from merging.errors import RecipeError
from merging.methods import Method, get_method
from merging.plan import merge_inputs, takes_base
from merging.recipe import (
    Conditional,
    ParameterValue,
    Recipe,
    Slice,
    parse_recipe_syntax,
    scalars_of,
)
from merging.recipe_text import read_recipe_data

NO_OP = {
    "int8_mask": "hubmerge computes in float32 and masks exactly, so int8_mask is a no-op",
    "embed_slerp": "a legacy mergekit parameter: embeddings are merged like every other tensor",
}


def parse_recipe(data: Any, *, strict: bool = False) -> Recipe:
    """Validate a recipe given as a mapping (parsed YAML): syntax, method and parameters.

    Args:
        data: the parsed YAML.
        strict (`bool`, *optional*): turn warnings into errors (as the recipe key ``strict``).

    Raises:
        `RecipeError`: naming the offending key and the allowed values.
    """
    recipe = parse_recipe_syntax(data)
    recipe.with_warnings(recipe_warnings(recipe))
    if (strict or recipe.strict) and recipe.warnings:
        raise RecipeError(
            "strict: the recipe has keys without effect:\n"
            + "\n".join(f"  {w}" for w in recipe.warnings)
        )
    return recipe


def load_recipe(source: str | Path, *, strict: bool = False) -> Recipe:
    """Load and validate a recipe from a YAML file path, or from YAML text when ``source``
    contains a newline.

    Example:
        >>> from merging import load_recipe
        >>> load_recipe("examples/ties.yaml").merge_method  # doctest: +SKIP
        'ties'
    """
    return parse_recipe(read_recipe_data(source), strict=strict)


def recipe_warnings(recipe: Recipe) -> list[str]:
    """Check the recipe against its method; return the warnings (keys without effect).

    Raises:
        `RecipeError`: unknown method, missing base, wrong number of inputs, bad slices, values
            out of range.
    """
    method = get_method(recipe.merge_method)
    warnings: list[str] = []
    models = {s.model for s in recipe.referenced_models()}
    for token, spec in (recipe.tokenizer.tokens if recipe.tokenizer else {}).items():
        model = getattr(spec.source, "model", spec.source)
        if isinstance(model, str) and model not in models:
            raise RecipeError(
                f"tokenizer.tokens.{token}.source: {model} is not one of the recipe's models "
                f"({', '.join(sorted(models))})"
            )
    if recipe.slices:
        for index, slice_ in enumerate(recipe.slices):
            _check_slice(recipe, method, slice_, index, warnings)
        unused = {s.key for s in recipe.models} - {
            s.key for slice_ in recipe.slices for s in slice_.sources
        }
        warnings += [f"models: {key} is in no slice; its parameters have no effect" for key in
                     sorted(unused)]  # fmt: skip
    else:
        _check_inputs(method, recipe, "models", len(_inputs(method, recipe)), recipe.inputs())
        if recipe.parameters.get("weights") is not None:
            _check_weight_list(recipe.parameters["weights"], len(_inputs(method, recipe)))
        _check_required(method, recipe.parameters, "parameters")
    _check_parameters(method, recipe.parameters, "parameters", warnings, per_source=False)
    for index, source in enumerate(recipe.models):
        where = f"models[{index}].parameters"
        is_base = source.model == recipe.base_model and source.adapter is None
        if is_base and takes_base(method, recipe.base_model) and not recipe.slices:
            warnings.append(
                f"models[{index}]: {source.model} is the base model listed again; it is the base, "
                "not an input" + (", so its parameters have no effect" if source.parameters else "")
            )
            continue
        _check_parameters(method, source.parameters, where, warnings, per_source=True)
    return warnings


def _inputs(method: Method[Any, Any], recipe: Recipe) -> list[Any]:
    return merge_inputs(method, recipe)


def _check_slice(
    recipe: Recipe, method: Method[Any, Any], slice_: Slice, index: int, warnings: list[str]
) -> None:
    where = f"slices[{index}]"
    lengths = {s.key: s.layer_range[1] - s.layer_range[0] for s in slice_.sources}
    if len(set(lengths.values())) > 1:
        spans = ", ".join(f"{k}: {n} layers" for k, n in lengths.items())
        raise RecipeError(f"{where}: all sources of a slice must span as many layers ({spans})")
    base = slice_.base_model or recipe.base_model
    inputs = list(slice_.sources)
    if method.needs_base:
        if base is None:
            raise RecipeError(f"{where}: {method.name} needs a base model (base_model)")
        inputs = [s for s in slice_.sources if not (s.model == base and s.adapter is None)]
        if len(inputs) == len(slice_.sources):
            raise RecipeError(
                f"{where}: {method.name} needs the base model {base} among the slice's sources "
                f"(it has {', '.join(s.key for s in slice_.sources)})"
            )
    elif takes_base(method, base) and any(s.model == base and not s.adapter for s in inputs):
        inputs = [s for s in slice_.sources if not (s.model == base and s.adapter is None)]
    _check_inputs(method, recipe, where, len(inputs), inputs)
    _check_parameters(method, slice_.parameters, f"{where}.parameters", warnings, per_source=False)
    params = {**recipe.parameters, **slice_.parameters}
    _check_required(method, params, f"{where}.parameters")
    for j, source in enumerate(slice_.sources):
        _check_parameters(
            method, source.parameters, f"{where}.sources[{j}].parameters", warnings,
            per_source=True,
        )  # fmt: skip


def _check_inputs(
    method: Method[Any, Any], recipe: Recipe, where: str, count: int, inputs: list[Any]
) -> None:
    if method.needs_base and recipe.base_model is None and not recipe.slices:
        raise RecipeError(f"base_model: {method.name} needs a base model")
    besides = " besides the base" if method.needs_base else ""
    if count < method.min_inputs:
        raise RecipeError(
            f"{where}: {method.name} needs at least {method.min_inputs} model(s){besides}"
        )
    if method.max_inputs is not None and count > method.max_inputs:
        raise RecipeError(
            f"{where}: {method.name} takes exactly {method.max_inputs} model(s){besides} "
            f"(got {count}: {', '.join(s.key for s in inputs)})"
        )


def _check_parameters(
    method: Method[Any, Any],
    parameters: dict[str, ParameterValue],
    where: str,
    warnings: list[str],
    *,
    per_source: bool,
) -> None:
    source_keys = _keys(method.source_params)
    for key, value in parameters.items():
        if key == "weights" and not per_source:
            continue  # one weight per model (hubmerge), checked against the inputs
        if key in NO_OP:
            warnings.append(f"{where}.{key}: has no effect ({NO_OP[key]})")
            continue
        found = _field_info(method, key)
        if found is None:
            warnings.append(
                f"{where}.{key}: {method.name} does not read this parameter, ignored (mergekit "
                f"ignores it too){did_you_mean(key, method.parameter_names())}"
            )
            continue
        if per_source and key not in source_keys:
            warnings.append(
                f"{where}.{key}: not a per-model parameter of {method.name}, so a model's value "
                "is never read (mergekit reads it only globally or per slice); ignored"
            )
            continue
        _check_value(found, f"{where}.{key}", value)


def _keys(model: type[Any]) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


def _field_info(method: Method[Any, Any], key: str) -> tuple[type[Any], str] | None:
    for model in (method.source_params, method.params):
        for name, field in model.model_fields.items():
            if key in (name, field.alias):
                return model, name
    return None


def _check_value(found: tuple[type[Any], str], where: str, value: ParameterValue) -> None:
    model, name = found
    for scalar in scalars_of(value):
        try:
            model.model_validate({name: scalar, **_required_stub(model, name)})
        except ValidationError as err:
            problem = next(e for e in err.errors() if e["loc"] and e["loc"][0] == name)
            raise RecipeError(f"{where} = {scalar!r}: {problem['msg']}") from None


def _required_stub(model: type[Any], skip: str) -> dict[str, Any]:
    """Placeholder values for the other required fields, so one field validates alone."""
    return {
        name: 0.5
        for name, field in model.model_fields.items()
        if field.is_required() and name != skip
    }


def _check_required(
    method: Method[Any, Any], parameters: dict[str, ParameterValue], where: str
) -> None:
    for name, field in method.params.model_fields.items():
        key = field.alias or name
        if not field.is_required():
            continue
        if key not in parameters:
            raise RecipeError(f"{where}.{key}: required by {method.name}")
        if not _has_fallback(parameters[key]):
            raise RecipeError(
                f"{where}.{key}: required by {method.name}, so its list of filters needs a "
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


__all__ = ["load_recipe", "parse_recipe", "recipe_warnings"]
