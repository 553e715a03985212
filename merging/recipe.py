"""Merge recipes: a frozen pydantic model, read from and written to YAML.

The schema is a superset of mergekit's, so a mergekit YAML loads as it is::

    merge_method: ties
    base_model: org/base@main
    models:
      - model: org/math-ft
        parameters: {weight: 0.6, density: 0.5}
      - model: ./local/code-ft
        parameters: {weight: [0.2, 0.8], density: 0.5}   # gradient across layers
    parameters: {normalize: true}
    dtype: bfloat16

A parameter value is a scalar, a *gradient* (a list of numbers, interpolated linearly
across the layers: layer ``i`` of ``n`` reads position ``i / (n - 1)``; tensors outside
the layer stack read position 0, as mergekit does) or a list of ``{filter, value}``
entries (the first entry whose ``filter`` is a substring of the tensor name wins; an
entry without filter, or with ``"*"``, matches everything).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from merging.errors import RecipeError

DTYPES = ("float32", "float16", "bfloat16")
_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16"}

Scalar = float | int | bool | str


class Conditional(BaseModel):
    """One ``{filter, value}`` entry of a parameter."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    filter: str | None = None
    value: Scalar | list[float]


ParameterValue = Scalar | list[float] | list[Conditional]


def evaluate_parameter(value: ParameterValue, tensor_name: str, t: float) -> Scalar | None:
    """Evaluate a parameter for one tensor.

    Args:
        value: a scalar, a gradient list, or a list of conditionals.
        tensor_name (`str`): the tensor being merged (used by filters).
        t (`float`): position in the layer stack, in [0, 1].

    Returns:
        The scalar value, or `None` when no conditional matches.
    """
    if isinstance(value, (bool, int, float, str)):
        return value
    if not value:
        return None
    if isinstance(value[0], Conditional):
        for cond in value:
            assert isinstance(cond, Conditional)
            if cond.filter in (None, "*") or cond.filter in tensor_name:
                return evaluate_parameter(cond.value, tensor_name, t)
        return None
    numbers = [float(v) for v in value]  # type: ignore[arg-type]
    scaled = t * (len(numbers) - 1)
    low = int(scaled)
    high = min(len(numbers) - 1, low + 1)
    frac = scaled - low
    return (1 - frac) * numbers[low] + frac * numbers[high]


def scalars_of(value: ParameterValue) -> list[Scalar]:
    """Every scalar a parameter can take, for range validation at load time."""
    if isinstance(value, (bool, int, float, str)):
        return [value]
    out: list[Scalar] = []
    for item in value:
        out.extend(scalars_of(item.value) if isinstance(item, Conditional) else [item])
    return out


class SourceSpec(BaseModel):
    """One input model: a local directory or a Hub repo id with optional ``@revision``.

    ``model`` may also use mergekit's ``base+adapter`` syntax to name a LoRA adapter that is
    applied to a model before merging; ``adapter`` says the same thing explicitly.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    model: str = Field(min_length=1)
    adapter: str | None = None
    parameters: dict[str, ParameterValue] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _split_plus(cls, data: Any) -> Any:
        if isinstance(data, dict) and "+" in str(data.get("model", "")):
            model, _, adapter = str(data["model"]).partition("+")
            if data.get("adapter") not in (None, adapter):
                raise ValueError("give the adapter either as 'base+adapter' or 'adapter', not both")
            data = {**data, "model": model, "adapter": adapter}
        return data


class Recipe(BaseModel):
    """A complete, reproducible description of one merge.

    Attributes:
        merge_method: registered method name (``method`` is accepted as an alias).
        base_model: the model task vectors are taken against; required by methods that need it.
        models: the sources, each with per-source parameters.
        parameters: global parameters; a per-source value overrides the global one.
        dtype: mergekit's ``dtype``; here it only sets the output dtype when ``out_dtype`` is unset.
        out_dtype: dtype of the written tensors (default: ``dtype``, else the base's dtype).
        compute_dtype: dtype the arithmetic runs in (default float32).
        tokenizer_source: ``base`` (default), or a model reference to copy the tokenizer from.
        vocab_policy: what to do when vocabularies differ: ``error`` (default), ``base`` (keep
            the base's rows; sources' extra rows are dropped, missing rows come from the base),
            or ``union`` (pad every source to the largest vocabulary with the base's rows).
        seed: seeds every random method (DARE): each tensor's generator is seeded from
            ``(seed, tensor name)``.
        allow_pickle: permit PyTorch ``.bin`` checkpoints (loaded with ``weights_only=True``).
        trust_remote_code: recorded only; hubmerge never executes model code.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    merge_method: str = Field(alias="method", min_length=1)
    base_model: str | None = None
    models: list[SourceSpec] = Field(default_factory=list)
    parameters: dict[str, ParameterValue] = Field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    compute_dtype: str = "float32"
    tokenizer_source: str | None = None
    vocab_policy: Literal["error", "base", "union"] = "error"
    seed: int = 0
    allow_pickle: bool = False
    trust_remote_code: bool = False

    @field_validator("dtype", "out_dtype", "compute_dtype")
    @classmethod
    def _known_dtype(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = _DTYPE_ALIASES.get(value, value)
        if value not in DTYPES:
            raise ValueError(f"unknown dtype {value!r}; allowed: {', '.join(DTYPES)}")
        return value

    @field_validator("tokenizer_source")
    @classmethod
    def _one_tokenizer(cls, value: str | None) -> str | None:
        if value == "union":  # mergekit builds a merged vocabulary; hubmerge does not (yet)
            raise ValueError("'union' is not supported; name one model, or 'base'")
        return value

    @field_validator("models")
    @classmethod
    def _non_empty(cls, value: list[SourceSpec]) -> list[SourceSpec]:
        if not value:
            raise ValueError("a recipe needs at least one entry under 'models'")
        return value

    @property
    def method(self) -> str:
        return self.merge_method

    def inputs(self) -> list[SourceSpec]:
        """Sources other than the base (mergekit lists the base under ``models`` too)."""
        return [s for s in self.models if not (s.model == self.base_model and s.adapter is None)]

    def output_dtype(self, base_dtype: str | None = None) -> str:
        return self.out_dtype or self.dtype or base_dtype or "float32"

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", by_alias=False, exclude_defaults=True)
        data = {"merge_method": self.merge_method, **data}
        for source in data.get("models", []):
            if not source.get("parameters"):
                source.pop("parameters", None)
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(recipe)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {where}: {message}")
    return "invalid recipe:\n" + "\n".join(lines)


def parse_recipe(data: Any) -> Recipe:
    """Validate a recipe given as a mapping (parsed YAML).

    Raises:
        `RecipeError`: the recipe is malformed or its method/parameters are invalid; the message
            names the key and the allowed values.
    """
    if not isinstance(data, dict):
        raise RecipeError(
            "a recipe must be a YAML mapping with at least 'merge_method' and 'models'"
        )
    if "merge_method" in data and "method" in data:
        raise RecipeError("give either 'merge_method' or 'method', not both")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(_format_validation_error(err)) from None
    from merging.methods import validate_recipe_parameters

    validate_recipe_parameters(recipe)
    return recipe


def load_recipe(source: str | Path) -> Recipe:
    """Load a recipe from a YAML file path, or from YAML text when ``source`` contains a newline."""
    text = str(source)
    if "\n" not in text:
        path = Path(text)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise RecipeError(f"cannot read recipe {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe is not valid YAML: {err}") from None
    return parse_recipe(data)
