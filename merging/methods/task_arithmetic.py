"""Task-vector methods: task arithmetic, TIES, DARE, Model Breadcrumbs.

They are one family (mergekit's "generalized task arithmetic"): take the task vectors
δᵢ = θᵢ − θ_base, optionally sparsify each (by magnitude, at random, or by magnitude without
outliers), optionally keep only the entries that agree with an elected sign, and add the
(weighted, optionally normalised, λ-scaled) sum back to the base. Each registered method is a
preset of that one function, not a copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import Field, field_validator
from torch import Tensor

from merging.methods._base import MethodParams, SourceParams, register
from merging.methods._family import FamilyKernel
from merging.methods._kernels import Kernel
from merging.methods._ops import (
    RandomStream,
    Rescale,
    mix_deltas,
    prune_magnitude,
    prune_magnitude_outliers,
    prune_random,
    task_vectors,
)


class TaskArithmeticParams(MethodParams):
    lambda_: float = Field(1.0, alias="lambda")
    normalize: bool = False
    divide_by: Literal["weights", "count"] = "weights"
    int8_mask: bool = False  # accepted for mergekit recipes; hubmerge always masks exactly


class TiesParams(TaskArithmeticParams):
    normalize: bool = True
    sign_method: Literal["sum", "count", "total"] = "sum"


class DareParams(TaskArithmeticParams):
    rescale: Rescale = "l1"

    @field_validator("rescale", mode="before")
    @classmethod
    def _from_mergekit_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):  # mergekit: `rescale: true` means L1-norm rescaling
            return "l1" if value else "none"
        return value


class DareTiesParams(DareParams, TiesParams):
    normalize: bool = False


class BreadcrumbsTiesParams(TiesParams):
    normalize: bool = False


class DensitySource(SourceParams):
    density: float = Field(1.0, gt=0, le=1)


class BreadcrumbsSource(DensitySource):
    gamma: float = Field(0.01, ge=0, lt=1)


Sparsifier = Callable[[Tensor, Any, Any, RandomStream, int], Tensor]


def _no_sparsify(delta: Tensor, source: Any, params: Any, rng: RandomStream, index: int) -> Tensor:
    return delta


def _magnitude(delta: Tensor, source: Any, params: Any, rng: RandomStream, index: int) -> Tensor:
    return prune_magnitude(delta, source.density)


def _random(delta: Tensor, source: Any, params: Any, rng: RandomStream, index: int) -> Tensor:
    return prune_random(delta, source.density, rng, params.rescale, source=index)


def _outliers(delta: Tensor, source: Any, params: Any, rng: RandomStream, index: int) -> Tensor:
    return prune_magnitude_outliers(delta, source.density, source.gamma)


def _family(sparsify: Sparsifier, consensus: bool) -> Callable[..., Tensor]:
    def merge(
        base: Tensor | None,
        inputs: Sequence[Tensor],
        sources: Sequence[Any],
        params: Any,
        rng: RandomStream,
    ) -> Tensor:
        assert base is not None
        deltas = [
            sparsify(delta, source, params, rng, index)
            for index, (delta, source) in enumerate(
                zip(task_vectors(base, inputs), sources, strict=True)
            )
        ]
        mixed = mix_deltas(deltas, sources, params, consensus=consensus)
        return base + params.lambda_ * mixed

    return merge


def _describe(sparsify: str, consensus: bool) -> Callable[[Any], str]:
    def semantics(p: Any) -> str:
        lines = [f"λ = {p.lambda_}."]
        if sparsify == "magnitude":
            lines.append(
                "Trim: per tensor and source, keep |δ| ≥ the k-th largest |δ|, k = ⌊density·n⌋ "
                "(all ties at the threshold are kept)."
            )
        elif sparsify == "random":
            lines.append(
                "Drop: each δ entry kept with probability density (a PCG64DXSM stream per "
                "(seed, tensor name, model, 65,536-element block); kept when its 16-bit draw "
                f"< round(density·2¹⁶)); rescale = {p.rescale}."
            )
        elif sparsify == "outliers":
            lines.append("Trim: drop the gamma share of largest |δ|, keep the next ⌊density·n⌋.")
        if consensus:
            lines.append(f"Sign election: {p.sign_method} (a tie elects +); zeros never vote.")
        if p.normalize:
            lines.append(f"Normalise: divide by the {p.divide_by} of the entries that take part.")
        else:
            lines.append("No normalisation.")
        return " ".join(lines)

    return semantics


_PRESETS = [
    # name, sparsifier, sparsify label, consensus, params, source params, formula, paper
    ("task_arithmetic", _no_sparsify, "none", False, TaskArithmeticParams, SourceParams,
     "θ = θ_base + λ·Σᵢ wᵢ·δᵢ", "https://arxiv.org/abs/2212.04089"),
    ("ties", _magnitude, "magnitude", True, TiesParams, DensitySource,
     "θ = θ_base + λ·Σᵢ wᵢ·mᵢ⊙trim(δᵢ) / Σᵢ wᵢ·mᵢ, mᵢ = [sign agrees]",
     "https://arxiv.org/abs/2306.01708"),
    ("dare_linear", _random, "random", False, DareParams, DensitySource,
     "θ = θ_base + λ·Σᵢ wᵢ·rescale(Bernoulli(density)⊙δᵢ)", "https://arxiv.org/abs/2311.03099"),
    ("dare_ties", _random, "random", True, DareTiesParams, DensitySource,
     "θ = θ_base + λ·Σᵢ wᵢ·mᵢ⊙dare(δᵢ), mᵢ = [sign agrees]", "https://arxiv.org/abs/2311.03099"),
    ("breadcrumbs", _outliers, "outliers", False, TaskArithmeticParams, BreadcrumbsSource,
     "θ = θ_base + λ·Σᵢ wᵢ·crumbs(δᵢ)", "https://arxiv.org/abs/2312.06795"),
    ("breadcrumbs_ties", _outliers, "outliers", True, BreadcrumbsTiesParams, BreadcrumbsSource,
     "θ = θ_base + λ·Σᵢ wᵢ·mᵢ⊙crumbs(δᵢ)", "https://arxiv.org/abs/2312.06795"),
]  # fmt: skip


def _kernel_factory(label: str, consensus: bool) -> Callable[..., Kernel]:
    return lambda p, s, rng, shape: FamilyKernel(label, consensus, p, s, rng, math.prod(shape))


for _name, _fn, _label, _consensus, _params, _source, _formula, _paper in _PRESETS:
    register(
        _name,
        params=_params,
        source_params=_source,
        formula=_formula,
        paper=_paper,
        randomized=_label == "random",
        semantics=_describe(_label, _consensus),
        kernel=_kernel_factory(_label, _consensus),
    )(_family(_fn, _consensus))
