"""The search space of a recipe: which of its parameters are genes, and their bounds.

A genome is a list of floats, one per `Gene`, each inside its bounds (the optimiser samples
bounded values; nothing is folded back with abs or clamp). `SearchSpace.decode` writes a
genome into a copy of the user's recipe, so every candidate is an ordinary recipe that
`hubmerge merge` can run:

* soups (``linear``): the weights lie on the simplex, through stick-breaking
  (n models → n − 1 genes in [0, 1]);
* task-vector methods (task arithmetic, TIES, DARE, Breadcrumbs): per-model weights, ``lambda``
  (when the method normalises the weights, else the weights carry the scale), and
  ``density`` (global, or per model) for the sparsifying methods;
* ``slerp``: ``t``.

The number of genes follows the budget (about one gene per 8 candidates): a small budget
searches ``lambda`` (and a global density) only, a larger one per-model weights and
densities, the next per-model weights for two layer groups (a two-point gradient,
early → late layers, interpolated across the layer stack as recipes do), then those weights
for attention and MLP tensors apart (``{filter, value}`` entries; the other tensors take
their mean), then the other tensors (embeddings, norms, the output head) with a weight of
their own, and the largest four layer groups (a four-point gradient) of those three parts.

>>> from merging import load_recipe
>>> space = space_from_recipe(load_recipe("examples/ties.yaml"), budget=32)  # doctest: +SKIP
>>> [gene.name for gene in space.genes]  # doctest: +SKIP
['weight[0]', 'weight[1]', 'lambda', 'density']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from app.search.errors import SearchError
from merging import Recipe, get_method, parse_recipe

WEIGHT_BOUNDS = (0.0, 1.5)
LAMBDA_BOUNDS = (0.25, 2.0)
DENSITY_BOUNDS = (0.1, 1.0)
UNIT = (0.0, 1.0)
DECIMALS = 4  # genomes are rounded to this many decimals (the memo key; what is decoded)
GENES_PER_BUDGET = 8
RICHER = ((2, 2), (2, 3), (4, 3))  # (layer groups, parts) of the richest weight layouts
PARTS = ("attn", "mlp")  # tensor-name filters of the attention / MLP parts (Llama, GPT-2, …)
REST = "rest"  # the third part: every tensor neither filter matches (embeddings, norms, head)
GROUP_NAMES = {1: ("",), 2: ("@early", "@late")}  # more groups: @g0, @g1, …


@dataclass(frozen=True)
class Gene:
    """One searched number: its name (as in the card) and its bounds."""

    name: str
    low: float
    high: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Layout:
    """Which parameters a space searches (see the module docstring)."""

    weights: Literal["none", "simplex", "free"] = "none"
    lambda_: bool = False
    density: Literal["none", "global", "per_model"] = "none"
    t: bool = False
    groups: int = 1  # 1: one value per parameter; 2: early / late; k: a k-point gradient
    parts: int = 1  # 1: one weight per model; 2: attention / MLP apart (filters); 3: + the rest


def stick_breaking(genes: Sequence[float]) -> list[float]:
    """n − 1 numbers in [0, 1] → n non-negative weights summing to 1."""
    weights, rest = [], 1.0
    for gene in genes:
        weights.append(rest * gene)
        rest *= 1.0 - gene
    return [*weights, rest]


def inverse_stick_breaking(weights: Sequence[float]) -> list[float] | None:
    total = sum(weights)
    if total <= 0 or any(w < 0 for w in weights):
        return None
    genes, rest = [], 1.0
    for weight in weights[:-1]:
        share = weight / total
        genes.append(share / rest if rest > 1e-12 else 0.5)
        rest -= share
    return genes


class SearchSpace:
    """The genes of one recipe and how they map onto it.

    Args:
        template (`Recipe`): the user's recipe; what is not searched stays as it says.
        layout (`Layout`): which parameters are genes.
    """

    def __init__(self, template: Recipe, layout: Layout) -> None:
        self.template = template
        self.layout = layout
        self.method = get_method(template.merge_method)
        base = template.base_model if self.method.needs_base else None
        self.positions = [
            j for j, s in enumerate(template.models)
            if not (base is not None and s.model == base and s.adapter is None)
        ]  # fmt: skip
        self.genes = tuple(self._genes())

    @property
    def inputs(self) -> list[str]:
        models = self.template.models
        return [models[j].model + (f"+{models[j].adapter}" if models[j].adapter else "")
                for j in self.positions]  # fmt: skip

    def _suffixes(self) -> list[str]:
        groups = self.layout.groups
        return list(GROUP_NAMES.get(groups, [f"@g{k}" for k in range(groups)]))

    def _parts(self) -> list[str]:
        names = [*PARTS, REST][: self.layout.parts] if self.layout.parts > 1 else []
        return [f"@{p}" for p in names] or [""]

    def _genes(self) -> list[Gene]:
        n, layout, genes = len(self.positions), self.layout, []
        for suffix in self._suffixes():
            if layout.weights == "simplex":
                genes += [Gene(f"simplex{suffix}[{k}]", *UNIT) for k in range(n - 1)]
            elif layout.weights == "free":
                low, high = WEIGHT_BOUNDS
                high *= max(1.0, self._template_lambda or 1.0)  # a larger λ widens, never narrows
                genes += [Gene(f"weight[{i}]{suffix}{part}", low, high)
                          for part in self._parts() for i in range(n)]  # fmt: skip
            if layout.t:
                genes.append(Gene(f"t{suffix}", *UNIT))
        if layout.lambda_:
            genes.append(Gene("lambda", *LAMBDA_BOUNDS))
        if layout.density == "global":
            genes.append(Gene("density", *DENSITY_BOUNDS))
        elif layout.density == "per_model":
            genes += [Gene(f"density[{i}]", *DENSITY_BOUNDS) for i in range(n)]
        return genes

    def __len__(self) -> int:
        return len(self.genes)

    @property
    def _template_lambda(self) -> float | None:
        """The template's λ when the searched weights carry the scale (free weights, no λ
        gene, a plain-number λ): the weights are then the effective ones, λ · w, and decoded
        recipes have λ = 1, so a recipe with λ = 0.5 does not cap them at 0.75."""
        if self.layout.weights != "free" or self.layout.lambda_:
            return None
        value = self.template.parameters.get("lambda", _default(self.method, "lambda_", 1.0))
        return float(value) if isinstance(value, (int, float)) else None

    def round(self, genome: Sequence[float]) -> tuple[float, ...]:
        """The genome as the memo key and as decoded: rounded, and kept inside the bounds
        (rounding a value at a bound can only land on the bound)."""
        return tuple(round(float(v), DECIMALS) + 0.0 for v in genome)

    def describe(self) -> list[dict[str, Any]]:
        return [gene.to_dict() for gene in self.genes]

    # ------------------------------------------------------------------ genome -> recipe
    def decode(self, genome: Sequence[float]) -> Recipe:
        """The recipe of a genome (a validated copy of the template)."""
        if len(genome) != len(self.genes):
            raise SearchError(f"genome has {len(genome)} values; the space has {len(self)} genes")
        values = dict(zip((g.name for g in self.genes), genome, strict=True))
        data = self.template.model_dump(mode="json", exclude_defaults=True)
        data["merge_method"] = self.template.merge_method
        models, parameters = data["models"], data.setdefault("parameters", {})
        for entry in models:
            entry.setdefault("parameters", {})
        n, layout = len(self.positions), self.layout

        def grouped(name: str) -> Any:
            picked = [values[f"{name}{suffix}"] for suffix in self._suffixes()]
            return picked[0] if len(picked) == 1 else picked

        if layout.weights != "none":
            parameters.pop("weights", None)
            simplex = {suffix: stick_breaking([values[f"simplex{suffix}[{k}]"]
                                               for k in range(n - 1)])
                       for suffix in self._suffixes()} if layout.weights == "simplex" else {}

            def weight(i: int, part: str) -> Any:
                picked = [round(simplex[suffix][i] if simplex
                                else values[f"weight[{i}]{suffix}{part}"], 6)
                          for suffix in self._suffixes()]  # fmt: skip
                return picked[0] if len(picked) == 1 else picked

            for i, j in enumerate(self.positions):
                parts = [weight(i, part) for part in self._parts()]
                if len(parts) == 1:
                    models[j]["parameters"]["weight"] = parts[0]
                    continue
                if len(parts) == 3:
                    rest = parts.pop()
                elif isinstance(parts[0], list):  # the other tensors take the parts' mean
                    rest = [(x + y) / 2 for x, y in zip(*parts, strict=True)]
                else:
                    rest = (parts[0] + parts[1]) / 2
                models[j]["parameters"]["weight"] = [
                    *({"filter": f, "value": v} for f, v in zip(PARTS, parts, strict=True)),
                    {"value": rest}]  # fmt: skip
        if self._template_lambda is not None:  # the weights carry the whole scale
            parameters.pop("lambda", None)
            if _default(self.method, "lambda_", 1.0) != 1.0:
                parameters["lambda"] = 1.0
        if layout.t:
            parameters["t"] = grouped("t")
        if layout.lambda_:
            parameters["lambda"] = values["lambda"]
        if layout.density == "global":
            parameters["density"] = values["density"]
            for j in self.positions:
                models[j]["parameters"].pop("density", None)
        elif layout.density == "per_model":
            for i, j in enumerate(self.positions):
                models[j]["parameters"]["density"] = values[f"density[{i}]"]
        return parse_recipe(data)

    # ------------------------------------------------------------------ recipe -> genome
    def encode(self, recipe: Recipe) -> list[float] | None:
        """The genome of a recipe of the same method and sources, or `None` when the recipe
        lies outside the space (another method, other models, values out of bounds)."""
        template = self.template
        same = (recipe.merge_method == template.merge_method
                and recipe.base_model == template.base_model
                and [(s.model, s.adapter) for s in recipe.models]
                == [(s.model, s.adapter) for s in template.models])  # fmt: skip
        if not same:
            return None
        try:
            values = self._read(recipe)
        except _NotEncodable:
            return None
        genome = [values[g.name] for g in self.genes]
        inside = all(g.low - 1e-9 <= v <= g.high + 1e-9 for g, v in zip(self.genes, genome,
                                                                         strict=True))  # fmt: skip
        return [min(max(v, g.low), g.high) for g, v in zip(self.genes, genome, strict=True)] \
            if inside else None  # fmt: skip

    def _read(self, recipe: Recipe) -> dict[str, float]:
        layout, values = self.layout, {}
        groups = self._suffixes()
        lam = _number(recipe.parameters.get("lambda", _default(self.method, "lambda_", 1.0)))
        if layout.weights != "none":
            weights = [self._weight(recipe, i, j) for i, j in enumerate(self.positions)]
            for g, suffix in enumerate(groups):
                column = [_at(w, g, len(groups)) for w in weights]
                if layout.weights == "simplex":
                    genes = inverse_stick_breaking(column)
                    if genes is None:
                        raise _NotEncodable
                    values.update({f"simplex{suffix}[{k}]": v for k, v in enumerate(genes)})
                else:
                    template_lam = _number(self.template.parameters.get("lambda", 1.0))
                    scale = 1.0 if layout.lambda_ else lam / (
                        1.0 if self._template_lambda is not None else template_lam)  # fmt: skip
                    values.update({f"weight[{i}]{suffix}{part}": w * scale
                                   for part in self._parts()
                                   for i, w in enumerate(column)})  # fmt: skip
        if layout.t:
            t = _gradient(recipe.parameters.get("t", 0.5))
            for g, suffix in enumerate(groups):
                values[f"t{suffix}"] = _at(t, g, len(groups))
        if layout.lambda_:
            values["lambda"] = lam
        if layout.density != "none":
            default = recipe.parameters.get("density", 1.0)
            densities = [_number(recipe.models[j].parameters.get("density", default))
                         for j in self.positions]  # fmt: skip
            if layout.density == "global":
                values["density"] = sum(densities) / len(densities)
            else:
                values.update({f"density[{i}]": d for i, d in enumerate(densities)})
        return values

    def _weight(self, recipe: Recipe, i: int, j: int) -> list[float]:
        source = recipe.models[j]
        if "weight" in source.parameters:
            return _gradient(source.parameters["weight"])
        weights = recipe.parameters.get("weights")
        if isinstance(weights, list):
            return [_number(weights[i])]
        return _gradient(recipe.parameters.get("weight", 1.0))


class _NotEncodable(Exception):
    pass


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
            return sum(float(v) for v in value) / len(value)
        raise _NotEncodable
    return float(value)


def _gradient(value: Any) -> list[float]:
    if isinstance(value, list):
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return [float(value[0]), float(value[-1])]
        raise _NotEncodable
    return [_number(value)]


def _at(gradient: list[float], group: int, groups: int) -> float:
    """A two-point gradient's value for layer group `group` of `groups` (one group: the
    mean)."""
    if groups == 1:
        return (gradient[0] + gradient[-1]) / 2
    return gradient[0] + (gradient[-1] - gradient[0]) * group / (groups - 1)


def _default(method: Any, name: str, fallback: float) -> float:
    field = method.params.model_fields.get(name)
    return float(field.default) if field is not None and not field.is_required() else fallback


def _normalizes(recipe: Recipe, method: Any) -> bool:
    value = recipe.parameters.get("normalize", _default(method, "normalize", 0.0))
    return bool(value)


def layouts(recipe: Recipe) -> list[Layout]:
    """The spaces a recipe can be searched in, from the fewest genes to the most."""
    method = get_method(recipe.merge_method)
    source_fields = set(method.source_params.model_fields)
    params = set(method.params.model_fields)
    if method.name == "linear":
        n = len(recipe.models)
        if n < 2:
            raise SearchError("a soup search needs at least two models")
        return [Layout(weights="simplex"), Layout(weights="simplex", groups=2)]
    if "t" in params:
        return [Layout(t=True), Layout(t=True, groups=2)]
    if method.needs_base and "lambda_" in params:
        density = "density" in source_fields
        normalized = _normalizes(recipe, method)
        out = [Layout(lambda_=True)]
        if density:
            out.append(Layout(lambda_=True, density="global"))
        out.append(Layout(weights="free", lambda_=normalized))
        if density:
            out += [Layout(weights="free", lambda_=normalized, density="global"),
                    Layout(weights="free", lambda_=normalized, density="per_model"),
                    Layout(weights="free", lambda_=normalized, density="per_model", groups=2),
                    *(Layout(weights="free", lambda_=normalized, density="per_model",
                             groups=groups, parts=parts) for groups, parts in RICHER)]  # fmt: skip
        else:
            out += [Layout(weights="free", lambda_=normalized, groups=2),
                    *(Layout(weights="free", lambda_=normalized, groups=groups, parts=parts)
                      for groups, parts in RICHER)]  # fmt: skip
        return out
    if "weight" in source_fields and len(recipe.models) > 1 and method.max_inputs != 0:
        return [Layout(weights="free")]
    raise SearchError(f"{method.name} has no parameters to search (try ties or linear)")


def space_from_recipe(recipe: Recipe, *, budget: int, max_genes: int | None = None) -> SearchSpace:
    """The richest space whose number of genes fits the budget (genes ≤ budget / 8, at least
    the smallest space), or ``max_genes`` when given.

    Raises:
        `SearchError`: the recipe's method has nothing to search.
    """
    limit = max_genes if max_genes is not None else max(1, budget // GENES_PER_BUDGET)
    spaces = [SearchSpace(recipe, layout) for layout in layouts(recipe)]
    fitting = [s for s in spaces if len(s) <= limit]
    if not fitting:
        return min(spaces, key=len)
    return max(fitting, key=len)  # the first of the largest (richer layouts come later)


def genome_distance(a: Sequence[float], b: Sequence[float], space: SearchSpace) -> float:
    """Euclidean distance in bound-normalised coordinates (each gene scaled to [0, 1])."""
    return math.sqrt(sum(((x - y) / (g.high - g.low)) ** 2
                         for x, y, g in zip(a, b, space.genes, strict=True)))  # fmt: skip
