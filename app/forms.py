"""Recipe ⇄ form values: the method form is generated from the registry's params models.

The form holds a method, a base model, a table of sources (model, then one column per
per-source parameter any method has) and one input per global parameter of every method.
The recipe YAML is the source of truth: form edits rewrite only the keys the form controls
(method, base, models, method parameters), so other keys (dtype, seed, …) survive.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

import yaml

from merging import METHODS, parse_recipe
from merging.errors import RecipeError

GREEDY_SOUP = "greedy_soup"
SOUP_NOTE = "# greedy soup: ingredients join the soup only if the held-out score does not drop\n"


@dataclass(frozen=True)
class ParamField:
    """One global parameter input of one method."""

    method: str
    name: str  # attribute name on the params model
    key: str  # key in the recipe (the alias when there is one)
    kind: str  # "bool", "float", "int", "choice", "text"
    default: Any
    required: bool
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.key


def _bounds(metadata: list[Any]) -> tuple[float | None, float | None]:
    low = high = None
    for item in metadata:
        for attr in ("ge", "gt"):
            if getattr(item, attr, None) is not None:
                low = float(getattr(item, attr))
        for attr in ("le", "lt"):
            if getattr(item, attr, None) is not None:
                high = float(getattr(item, attr))
    return low, high


def _field(method: str, name: str, info: Any) -> ParamField:
    annotation = info.annotation
    low, high = _bounds(list(info.metadata))
    required = info.is_required()
    default = None if required else info.default
    common = {"method": method, "name": name, "key": info.alias or name, "required": required}
    if typing.get_origin(annotation) is typing.Literal:
        choices = tuple(str(c) for c in typing.get_args(annotation))
        return ParamField(kind="choice", default=default, choices=choices, **common)
    if annotation is bool:
        return ParamField(kind="bool", default=default, **common)
    if annotation in (int, float):
        kind = "int" if annotation is int else "float"
        return ParamField(kind=kind, default=default, minimum=low, maximum=high, **common)
    return ParamField(kind="text", default=default, **common)


def method_names() -> list[str]:
    return [*METHODS.names(), GREEDY_SOUP]


def engine_method(name: str) -> str:
    return "linear" if name == GREEDY_SOUP else name


def param_fields() -> list[ParamField]:
    """Every global parameter of every registered method, in registry order."""
    fields = []
    for name in METHODS.names():
        for attr, info in METHODS.get(name).params.model_fields.items():
            fields.append(_field(name, attr, info))
    return fields


def source_columns() -> list[str]:
    """Columns of the sources table: model, then every per-source parameter (weight first)."""
    names: dict[str, None] = {"weight": None}
    for name in METHODS.names():
        for attr, info in METHODS.get(name).source_params.model_fields.items():
            names[info.alias or attr] = None
    return ["model", *names]


def method_info(name: str) -> str:
    """Markdown: the method's one-line formula, its paper, and what it needs."""
    if name == GREEDY_SOUP:
        return (
            "**greedy_soup** — order ingredients by held-out score, add each to a uniform "
            "`linear` soup only if the score does not drop. "
            "[paper](https://arxiv.org/abs/2203.05482)"
        )
    method = METHODS.get(name)
    needs = "needs a base model" if method.needs_base else "no base model"
    count = f"{method.min_inputs}" + (
        f"–{method.max_inputs}" if method.max_inputs != method.min_inputs else ""
    )
    if method.max_inputs is None:
        count = f"{method.min_inputs}+"
    return (
        f"**{name}** — `{method.formula}`  \n[paper]({method.paper}) · {needs} · "
        f"{count} input model(s) · per-model: " + ", ".join(f"`{c}`" for c in _source_keys(name))
    )


def _source_keys(method: str) -> list[str]:
    params = METHODS.get(engine_method(method)).source_params
    return [info.alias or attr for attr, info in params.model_fields.items()]


def _blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:  # NaN from pandas
        return True
    return isinstance(value, str) and not value.strip()


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def rows_to_models(rows: list[list[Any]] | None, method: str) -> list[dict[str, Any]]:
    """Table rows → recipe ``models`` entries (blank rows and cells are skipped)."""
    columns = source_columns()
    allowed = set(_source_keys(method))
    models = []
    for row in rows or []:
        cells = dict(zip(columns, list(row) + [None] * len(columns), strict=False))
        if _blank(cells.get("model")):
            continue
        entry: dict[str, Any] = {"model": str(cells["model"]).strip()}
        params = {
            key: _number(value)
            for key, value in cells.items()
            if key != "model" and key in allowed and not _blank(value)
        }
        if params:
            entry["parameters"] = params
        models.append(entry)
    return models


def models_to_rows(models: list[dict[str, Any]]) -> list[list[Any]]:
    columns = source_columns()
    rows = []
    for entry in models:
        model = str(entry.get("model", ""))
        if entry.get("adapter"):
            model += f"+{entry['adapter']}"
        params = entry.get("parameters") or {}
        rows.append([model, *(_scalar(params.get(c)) for c in columns[1:])])
    return rows


def _scalar(value: Any) -> Any:
    return value if isinstance(value, (int, float, str)) or value is None else str(value)


def param_values_to_dict(method: str, values: list[Any]) -> dict[str, Any]:
    """Form values (one per `param_fields()` entry) → the chosen method's non-default params."""
    out: dict[str, Any] = {}
    for field, value in zip(param_fields(), values, strict=False):
        if field.method != engine_method(method) or _blank(value):
            continue
        if field.kind == "int":
            value = int(value)
        elif field.kind == "float":
            value = float(value)
        if field.required or value != field.default:
            out[field.key] = value
    return out


def load_yaml_mapping(text: str | None) -> dict[str, Any]:
    """Parse YAML text into a mapping; blank text is an empty mapping."""
    if not text or not text.strip():
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a YAML mapping with 'merge_method' and 'models'")
    return data


def form_to_yaml(
    current: str | None, method: str, base: str | None, rows: Any, values: list[Any]
) -> str:
    """Rewrite the form-controlled keys of `current` (kept where it does not parse)."""
    try:
        data = load_yaml_mapping(current)
    except RecipeError:
        data = {}
    data.pop("method", None)
    data["merge_method"] = engine_method(method)
    base = (base or "").strip()
    if base and METHODS.get(engine_method(method)).needs_base:
        data["base_model"] = base
    else:
        data.pop("base_model", None)
    data["models"] = rows_to_models(_as_rows(rows), method)
    data["parameters"] = param_values_to_dict(method, values)
    if not data["parameters"]:
        data.pop("parameters")
    ordered = {
        k: data[k] for k in ("merge_method", "base_model", "models", "parameters") if k in data
    }
    ordered.update({k: v for k, v in data.items() if k not in ordered})
    text = yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True)
    return (SOUP_NOTE + text) if method == GREEDY_SOUP else text


def _as_rows(rows: Any) -> list[list[Any]]:
    if rows is None:
        return []
    if hasattr(rows, "values") and hasattr(rows, "columns"):  # a pandas DataFrame
        return [list(r) for r in rows.values.tolist()]
    if isinstance(rows, dict) and "data" in rows:
        return [list(r) for r in rows["data"]]
    return [list(r) for r in rows]


@dataclass(frozen=True)
class FormValues:
    method: str
    base: str
    rows: list[list[Any]]
    values: list[Any]


def yaml_to_form(text: str, *, soup: bool = False) -> FormValues:
    """Parse recipe YAML (hubmerge or mergekit) into form values.

    Raises:
        `RecipeError`: the YAML is not a valid recipe.
    """
    data = load_yaml_mapping(text)
    recipe = parse_recipe(data)
    method = recipe.merge_method
    models = [s.model_dump(exclude_defaults=True) for s in recipe.models]
    if METHODS.get(method).needs_base and recipe.base_model:
        models = [
            m for m in models if not (m["model"] == recipe.base_model and not m.get("adapter"))
        ]
    values = []
    for field in param_fields():
        raw = recipe.parameters.get(field.key, recipe.parameters.get(field.name))
        value = raw if field.method == method and isinstance(raw, (int, float, str)) else None
        values.append(field.default if value is None else value)
    shown = GREEDY_SOUP if soup and method == "linear" else method
    return FormValues(shown, recipe.base_model or "", models_to_rows(models), values)


def is_soup(text: str | None) -> bool:
    return bool(text) and text.lstrip().startswith(SOUP_NOTE.strip())


def has_slices(text: str | None) -> bool:
    """Whether a recipe's YAML has a ``slices:`` block, which the form cannot represent."""
    try:
        data = yaml.safe_load(text or "")
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and bool(data.get("slices"))
