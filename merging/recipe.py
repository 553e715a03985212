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

This module is syntax only (plus warnings for keys that have no effect); binding parameters
to a method happens in `merging.validate` and `merging.plan`, which ``merging.load_recipe``
runs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from merging._recipe_keys import Lenient
from merging.align.settings import AlignSettings
from merging.chat_templates import check_chat_template
from merging.errors import RecipeError
from merging.tokenizer_spec import TokenizerSpec, tokenizer_choice

DTYPES = ("float32", "float16", "bfloat16")
_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16"}

Scalar = float | int | bool | str


def _not_empty(value: Any) -> Any:
    if isinstance(value, list) and not value:
        raise ValueError("an empty list is not a value: give a number, or a gradient [a, b, ...]")
    return value


class Conditional(BaseModel):
    """One ``{filter, value}`` entry of a parameter."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    filter: str | None = None
    value: Annotated[Scalar | list[float], AfterValidator(_not_empty)]


ParameterValue = Annotated[Scalar | list[float] | list[Conditional], AfterValidator(_not_empty)]


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
    numbers = [float(v) for v in value if not isinstance(v, Conditional)]
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

    @property
    def key(self) -> str:
        """How the recipe names this model (``model`` or ``model+adapter``)."""
        return self.model + (f"+{self.adapter}" if self.adapter else "")


class SliceSource(SourceSpec):
    """One source of a slice: layers ``[start, end)`` of a model (mergekit's
    ``InputSliceDefinition``)."""

    layer_range: tuple[int, int]

    @field_validator("layer_range")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        start, end = value
        if start < 0 or end <= start:
            raise ValueError(f"layer_range {list(value)} is empty or negative; write [start, end)")
        return value


class Slice(BaseModel):
    """One output slice: layers taken from each source and merged (``OutputSliceDefinition``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    sources: list[SliceSource] = Field(min_length=1)
    parameters: dict[str, ParameterValue] = Field(default_factory=dict)
    base_model: str | None = None

    @property
    def num_layers(self) -> int:
        start, end = self.sources[0].layer_range
        return end - start


class Recipe(BaseModel):
    """A complete, reproducible description of one merge.

    Attributes:
        merge_method: registered method name (``method`` is accepted as an alias).
        base_model: the model task vectors are taken against; required by methods that need it.
        models: the sources, each with per-source parameters.
        slices: mergekit's ``slices:`` (layer ranges of sources, merged slice by slice and
            stacked); with slices, ``models`` is optional and only gives per-model parameters.
        parameters: global parameters; a per-source value overrides the global one.
        dtype: mergekit's ``dtype``; here it only sets the output dtype when ``out_dtype`` is unset.
        out_dtype: dtype of the written tensors (default: ``dtype``, else the base's dtype).
        compute_dtype: dtype the arithmetic runs in (default float32).
        tokenizer_source: ``base`` (default), ``union`` (a vocabulary built from every source's
            tokenizer; embedding rows mapped by token), or a model reference.
        tokenizer: mergekit's ``tokenizer:`` block (source, per-token sources, padding).
        chat_template: ``auto``, a built-in name (``chatml``, ``alpaca``, …) or a Jinja string.
        strict: turn every warning (keys with no effect) into an error.
        vocab_policy: what to do when vocabularies differ: ``error`` (default), ``base`` (keep
            the base's rows; sources' extra rows are dropped, missing rows come from the base),
            or ``union`` (pad every source to the largest vocabulary with the base's rows).
        seed: seeds every random method (DARE): each tensor's generator is seeded from
            ``(seed, tensor name)``.
        allow_pickle: permit PyTorch ``.bin`` checkpoints (loaded with ``weights_only=True``).
        trust_remote_code: recorded only; hubmerge never executes model code.
        allow_crimes: merge sources whose configs name different architectures (mergekit's
            ``--allow-crimes``); their tensor names and shapes must still line up, and the
            output's config is the reference's. Off: such sources are refused.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    merge_method: str = Field(alias="method", min_length=1)
    base_model: str | None = None
    models: list[SourceSpec] = Field(default_factory=list)
    slices: list[Slice] | None = None
    parameters: dict[str, ParameterValue] = Field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    compute_dtype: str = "float32"
    tokenizer_source: str | None = None
    tokenizer: TokenizerSpec | None = None
    chat_template: str | None = None
    vocab_policy: Literal["error", "base", "union"] = "error"
    seed: int = 0
    allow_pickle: bool = False
    trust_remote_code: bool = False
    allow_crimes: bool = False
    strict: bool = False
    align: AlignSettings | None = None  # permute sources into one basis first (merging.align)
    _warnings: tuple[str, ...] = PrivateAttr(default=())

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
    def _tokenizer_source(cls, value: str | None) -> str | None:
        return None if value is None else tokenizer_choice(value)

    @field_validator("chat_template")
    @classmethod
    def _chat_template(cls, value: str | None) -> str | None:
        return None if value is None else check_chat_template(value)

    @model_validator(mode="after")
    def _models_or_slices(self) -> Recipe:
        if self.slices is not None and not self.slices:
            raise ValueError("slices: empty; give at least one slice, or use 'models'")
        if not self.models and not self.slices:
            raise ValueError("a recipe needs at least one entry under 'models' (or 'slices')")
        if self.tokenizer_source is not None and self.tokenizer is not None:
            raise ValueError("give either tokenizer_source or a tokenizer block, not both")
        return self

    @property
    def warnings(self) -> tuple[str, ...]:
        """Keys that were accepted but have no effect (see `merging.validate`)."""
        return self._warnings

    def with_warnings(self, warnings: list[str] | tuple[str, ...]) -> Recipe:
        """This recipe with ``warnings`` recorded (deduplicated, in order)."""
        self._warnings = tuple(dict.fromkeys([*self._warnings, *warnings]))
        return self

    def referenced_models(self) -> list[SourceSpec]:
        """Every model the recipe reads (base first), each once (mergekit's
        ``referenced_models``, in a stable order)."""
        specs = [SourceSpec(model=self.base_model)] if self.base_model else []
        for slice_ in self.slices or []:
            specs += [SourceSpec(model=s.model, adapter=s.adapter) for s in slice_.sources]
        specs += [SourceSpec(model=s.model, adapter=s.adapter) for s in self.models]
        unique: dict[str, SourceSpec] = {}
        for spec in specs:
            unique.setdefault(spec.key, spec)
        return list(unique.values())

    def references(self) -> list[str]:
        """Every model or adapter reference the recipe reads: sources, adapters, and the models
        its tokenizer settings name (for access checks)."""
        names = [s.model for s in self.referenced_models()]
        names += [s.adapter for s in self.referenced_models() if s.adapter]
        if self.tokenizer_choice not in ("base", "union"):
            names.append(self.tokenizer_choice)
        for spec in (self.tokenizer.tokens if self.tokenizer else {}).values():
            model = getattr(spec.source, "model", spec.source)
            if isinstance(model, str):
                names.append(model)
        return list(dict.fromkeys(names))

    @property
    def tokenizer_choice(self) -> str:
        """``base``, ``union`` or a model reference: where the output's vocabulary comes from."""
        if self.tokenizer is not None:
            return self.tokenizer.source
        return self.tokenizer_source or "base"

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
        where = "merge_method" if where == "method" else where
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {where}: {message}")
    return "invalid recipe:\n" + "\n".join(lines)


def known_keys() -> list[str]:
    """Every top-level key a recipe may have (field names and aliases)."""
    return [k for name, f in Recipe.model_fields.items() for k in (name, f.alias) if k]


def parse_recipe_syntax(data: Any) -> Recipe:
    """Validate a recipe's syntax (parsed YAML); keys with no effect become warnings.

    This does not look methods up: `merging.parse_recipe` (`merging.validate`) also binds the
    parameters to the method and is what callers want.

    Raises:
        `RecipeError`: the recipe is malformed; the message names the key and what is allowed.
    """
    if not isinstance(data, dict):
        raise RecipeError(
            "a recipe must be a YAML mapping with at least 'merge_method' and 'models'"
        )
    if "merge_method" in data and "method" in data:
        raise RecipeError("give either 'merge_method' or 'method', not both")
    lenient = Lenient(known_keys())
    cleaned = lenient.clean(data)
    try:
        recipe = Recipe.model_validate(cleaned)
    except ValidationError as err:
        text = _format_validation_error(err)
        if lenient.warnings:
            text += "\n" + "\n".join(f"  (warning) {w}" for w in lenient.warnings)
        raise RecipeError(text) from None
    return recipe.with_warnings(lenient.warnings)
