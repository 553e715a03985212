"""The tensor plan: for every output tensor, its inputs and the parameters in effect.

Planning reads configs and safetensors headers only (no weight data). The engine streams the
plan; `merging.check` compares the inputs' shapes and prints it in short.

``models:`` recipes are one slice spanning every model's layers, as mergekit normalises them
(``MergePlanner.normalize_config``); ``slices:`` follow mergekit 0.1.5's ``MergePlanner``:

- output layers are the slices' layers in order, renumbered from 0; a slice's sources span as
  many layers each, and layer ``j`` of a slice merges layer ``start + j`` of every source;
- inside a slice of ``n`` layers, layer ``j`` reads gradients at ``t = j / (n - 1)``
  (``t = 1`` when ``n = 1``); tensors outside the layer stack read ``t = 0``;
- tensors before the layers (embeddings) merge the first slice's sources with its
  parameters, tensors after them (final norm, LM head) the last slice's;
- a parameter is looked up source-in-slice, then slice, then the source's ``models:`` entry,
  then global; a level whose filters match nothing falls through to the next
  (``ConfigReader.parameter``). Per-source filters see the tensor's name in that source,
  global ones the output name.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from merging.errors import RecipeError
from merging.io.headers import SourceInfo
from merging.methods import Method, MethodParams, SourceParams, get_method
from merging.recipe import (
    ParameterValue,
    Recipe,
    Slice,
    SliceSource,
    SourceSpec,
    evaluate_parameter,
)

_LAYER = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")
PRE_LAYER_HINTS = ("embed_tokens", "embed_in", "wte", "wpe", "word_embeddings", "embeddings.")
# config lists with one entry per layer, renumbered with the layers
PER_LAYER_KEYS = (
    "layer_types", "sliding_window_pattern_list", "no_rope_layers", "mlp_only_layers",
)  # fmt: skip
Chain = list[dict[str, ParameterValue]]


def layer_index(tensor_name: str) -> int | None:
    match = _LAYER.search(tensor_name)
    return int(match.group(1)) if match else None


def with_layer(tensor_name: str, index: int) -> str:
    """``tensor_name`` with its layer number replaced by ``index``."""
    match = _LAYER.search(tensor_name)
    assert match is not None
    start, end = match.span(1)
    return f"{tensor_name[:start]}{index}{tensor_name[end:]}"


def num_layers(config: dict[str, Any], headers: Any = ()) -> int:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return int(config[key])
    found = [i for i in map(layer_index, headers) if i is not None]
    return max(found) + 1 if found else 1


@dataclass(frozen=True)
class PlanInput:
    """One input of an output tensor: the tensor ``name`` of source ``source`` (its key)."""

    source: str
    name: str


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: inputs (the base first when ``has_base``), bound parameters."""

    name: str
    inputs: tuple[PlanInput, ...]
    has_base: bool
    params: MethodParams
    per_source: tuple[SourceParams, ...]
    layer: int | None = None
    slice: int | None = None


@dataclass(frozen=True)
class PlannedLayer:
    """Output layer ``index``: which layer of which source feeds it, in slice ``slice``."""

    index: int
    slice: int | None
    sources: tuple[tuple[str, int], ...]


@dataclass
class TensorPlan:
    method: Method[Any, Any]
    sources: dict[str, SourceSpec]
    reference: str
    tensors: list[PlannedTensor] = field(default_factory=list)
    layers: list[PlannedLayer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sliced: bool = False

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def reads(self, source: str) -> list[str]:
        """The tensor names a source is read for, in plan order (repeats kept)."""
        return [i.name for t in self.tensors for i in t.inputs if i.source == source]

    def summary(self, limit: int = 12) -> list[str]:
        """The plan in short: output layers and the source layers that feed each."""
        if not self.layers:
            return [f"{len(self.tensors)} tensors, each from the same tensor of every source"]
        lines = []
        runs: list[list[PlannedLayer]] = []
        for layer in self.layers:
            if runs and _continues(runs[-1][-1], layer):
                runs[-1].append(layer)
            else:
                runs.append([layer])
        for run in runs[:limit]:
            first, last = run[0], run[-1]
            out = f"{first.index}" if first is last else f"{first.index}-{last.index}"
            feeds = ", ".join(
                f"{key} [{a}, {b + 1})"
                for (key, a), (_, b) in zip(first.sources, last.sources, strict=True)
            )
            where = "" if first.slice is None else f" (slice {first.slice})"
            lines.append(f"layers {out}{where} <- {feeds}")
        if len(runs) > limit:
            lines.append(f"... {len(runs) - limit} more runs of layers")
        return lines

    def output_config(self, config: dict[str, Any], infos: dict[str, SourceInfo]) -> dict[str, Any]:
        """The reference's config with the layer count and per-layer lists following the plan."""
        out = dict(config)
        if not self.layers:
            return out
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(out.get(key), int):
                out[key] = self.num_layers
                break
        for key in PER_LAYER_KEYS:
            if not isinstance(out.get(key), list):
                continue
            values = []
            for layer in self.layers:
                source, index = layer.sources[0]
                own = infos[source].config.get(key)
                values.append(own[index] if isinstance(own, list) and index < len(own) else None)
            out[key] = values
        return out


def _continues(prev: PlannedLayer, layer: PlannedLayer) -> bool:
    return layer.slice == prev.slice and all(
        a[0] == b[0] and b[1] == a[1] + 1 for a, b in zip(prev.sources, layer.sources, strict=True)
    )


def takes_base(method: Method[Any, Any], base_model: str | None) -> bool:
    """Whether the method merges against a base: always when it needs one, and for methods
    whose base is optional (NuSLERP, Multi-SLERP) when the recipe names one."""
    return method.needs_base or (getattr(method, "optional_base", False) and bool(base_model))


def merge_inputs(method: Method[Any, Any], recipe: Recipe) -> list[SourceSpec]:
    """The sources a ``models:`` recipe merges, besides the base it merges against.

    With a base (`takes_base`): the models other than the base. Without: the listed models,
    and last the ``base_model`` when it is not listed and the method counts it as one more
    point (`Method.base_as_point`): mergekit 0.1.5 appends an unlisted base to the inputs of
    every ``models:`` recipe (``MergePlanner.normalize_config`` in ``mergekit/plan.py``), and a
    method that ignores bases, such as ``karcher``, then merges it like any other model.
    """
    if takes_base(method, recipe.base_model):
        return recipe.inputs()
    models = list(recipe.models)
    base = recipe.base_model
    counts = method.base_as_point is not None and method.base_as_point(recipe.parameters)
    if base and counts and not any(s.model == base and s.adapter is None for s in models):
        models.append(SourceSpec(model=base))
    return models


def plan_sources(recipe: Recipe) -> dict[str, SourceSpec]:
    """Every source a plan reads, by key (``model`` or ``model+adapter``), the reference first:
    the base when the method takes one (or when ``slices:`` name one), else the first model."""
    method = get_method(recipe.merge_method)
    out: dict[str, SourceSpec] = {}
    with_base = takes_base(method, recipe.base_model)
    if recipe.base_model and (with_base or recipe.slices):
        out[recipe.base_model] = SourceSpec(model=recipe.base_model)
    if recipe.slices:
        for slice_ in recipe.slices:
            for s in slice_.sources:
                out.setdefault(s.key, SourceSpec(model=s.model, adapter=s.adapter))
        return out
    for spec in merge_inputs(method, recipe):
        out.setdefault(spec.key, spec)
    return out


def build_plan(recipe: Recipe, infos: dict[str, SourceInfo]) -> TensorPlan:
    """Plan every output tensor from configs and headers.

    Args:
        recipe: a validated recipe (`merging.load_recipe`).
        infos: headers and config of every source, by source key (``model`` or
            ``model+adapter``; the base under ``recipe.base_model``).

    Problems that depend on the sources (a layer range past a source's layers, a tensor a
    source lacks) are collected in ``errors``, naming the slice and the source.
    """
    method = get_method(recipe.merge_method)
    if recipe.slices:
        return _plan_slices(recipe, method, infos)
    return _plan_models(recipe, method, infos)


def _plan_models(
    recipe: Recipe, method: Method[Any, Any], infos: dict[str, SourceInfo]
) -> TensorPlan:
    with_base = takes_base(method, recipe.base_model)
    specs = merge_inputs(method, recipe)
    keys = ([recipe.base_model] if with_base and recipe.base_model else []) + [s.key for s in specs]
    plan = TensorPlan(method, plan_sources(recipe), keys[0])
    reference = infos[keys[0]]
    n = num_layers(reference.config, reference.headers)
    weights = recipe.parameters.get("weights")
    chains: list[Chain] = [
        [s.parameters, _nth_weight(weights, i), recipe.parameters] for i, s in enumerate(specs)
    ]
    for name in reference.headers:
        index = layer_index(name)
        t = _position(index, n)
        inputs = tuple(PlanInput(k, name) for k in keys)
        params = _bind(method.params, [recipe.parameters], name, t)
        per_source = tuple(_bind(method.source_params, c, name, t) for c in chains)
        plan.tensors.append(PlannedTensor(name, inputs, with_base, params, per_source, index))
    found = [i for i in map(layer_index, reference.headers) if i is not None]
    depth = max(found, default=-1) + 1
    plan.layers = [PlannedLayer(i, None, tuple((k, i) for k in keys)) for i in range(depth)]
    return plan


def _nth_weight(weights: ParameterValue | None, index: int) -> dict[str, ParameterValue]:
    """hubmerge's ``parameters: {weights: [...]}``: one weight per model, in order."""
    if isinstance(weights, list) and index < len(weights):
        value = weights[index]
        if isinstance(value, (int, float)):
            return {"weight": float(value)}
    return {}


def _position(index: int | None, n: int) -> float:
    if index is None:
        return 0.0
    return index / (n - 1) if n > 1 else 1.0


def _plan_slices(
    recipe: Recipe, method: Method[Any, Any], infos: dict[str, SourceInfo]
) -> TensorPlan:
    slices = recipe.slices or []
    reference = recipe.base_model if recipe.base_model in infos else slices[0].sources[0].key
    plan = TensorPlan(method, plan_sources(recipe), reference, sliced=True)
    by_layer = {key: _layers_of(info) for key, info in infos.items()}
    for index, slice_ in enumerate(slices):
        for s in slice_.sources:
            have = len(by_layer[s.key])
            if s.layer_range[1] > have:
                plan.errors.append(
                    f"slices[{index}]: layer_range {list(s.layer_range)} of {s.key} is past its "
                    f"{have} layers"
                )
    if plan.errors:
        return plan
    outside = [n for n in infos[reference].headers if layer_index(n) is None]
    pre = [n for n in outside if any(h in n for h in PRE_LAYER_HINTS)]
    post = [n for n in outside if n not in pre]
    for name in pre:
        _plan_tensor(plan, recipe, slices[0], 0, name, [name] * len(slices[0].sources), 0.0)
    for index, slice_ in enumerate(slices):
        n = slice_.num_layers
        for j in range(n):
            out_layer = len(plan.layers)
            rows = [(s.key, s.layer_range[0] + j) for s in slice_.sources]
            plan.layers.append(PlannedLayer(out_layer, index, tuple(rows)))
            first_key, first_layer = rows[0]
            for template in by_layer[first_key][first_layer]:
                names = [with_layer(template, layer) for _, layer in rows]
                _plan_tensor(
                    plan, recipe, slice_, index, with_layer(template, out_layer), names,
                    j / (n - 1) if n > 1 else 1.0, out_layer,
                )  # fmt: skip
    last = len(slices) - 1
    for name in post:
        names = [name] * len(slices[last].sources)
        _plan_tensor(plan, recipe, slices[last], last, name, names, 0.0)
    for tensor in plan.tensors:
        for source in tensor.inputs:
            if source.name not in infos[source.source].headers:
                where = f"slices[{tensor.slice}]" if tensor.slice is not None else "slices"
                plan.errors.append(f"{where}: {source.source} has no tensor {source.name}")
    return plan


def _layers_of(info: SourceInfo) -> list[list[str]]:
    grouped: dict[int, list[str]] = defaultdict(list)
    for name in info.headers:
        index = layer_index(name)
        if index is not None:
            grouped[index].append(name)
    count = max(num_layers(info.config, info.headers), max(grouped, default=-1) + 1)
    return [grouped.get(i, []) for i in range(count)]


def _plan_tensor(
    plan: TensorPlan,
    recipe: Recipe,
    slice_: Slice,
    index: int,
    name: str,
    names: list[str],
    t: float,
    layer: int | None = None,
) -> None:
    method = plan.method
    base = slice_.base_model or recipe.base_model
    order = list(range(len(slice_.sources)))
    with_base = takes_base(method, base) and any(_is(s, base) for s in slice_.sources)
    if with_base:
        order.sort(key=lambda i: not _is(slice_.sources[i], base))  # the base first
    entries = [slice_.sources[i] for i in order]
    inputs = tuple(PlanInput(s.key, names[i]) for s, i in zip(entries, order, strict=True))
    params = _bind(method.params, [slice_.parameters, recipe.parameters], name, t)
    others = entries[1:] if with_base else entries
    per_source = tuple(
        _bind(method.source_params, _source_chain(recipe, slice_, s), names[i], t)
        for s, i in zip(others, order[1:] if with_base else order, strict=True)
    )
    plan.tensors.append(PlannedTensor(name, inputs, with_base, params, per_source, layer, index))


def _is(source: SliceSource, base: str | None) -> bool:
    return source.model == base and source.adapter is None


def _source_chain(recipe: Recipe, slice_: Slice, source: SliceSource) -> Chain:
    own = [s.parameters for s in slice_.sources if s.key == source.key]
    entry = next((m.parameters for m in recipe.models if m.key == source.key), {})
    return [*own, slice_.parameters, entry, recipe.parameters]


def _bind(model: type[Any], chain: Chain, tensor_name: str, t: float) -> Any:
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        for level in chain:
            if key in level:
                value = evaluate_parameter(level[key], tensor_name, t)
                if value is not None:
                    values[name] = value
                    break
    try:
        return model.model_validate(values)
    except ValidationError as err:
        raise RecipeError(f"parameters for tensor {tensor_name}: {err}") from None


__all__ = [
    "PlanInput",
    "PlannedLayer",
    "PlannedTensor",
    "TensorPlan",
    "build_plan",
    "layer_index",
    "merge_inputs",
    "num_layers",
    "plan_sources",
    "takes_base",
    "with_layer",
]
