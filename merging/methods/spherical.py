"""Means on the hypersphere: Multi-SLERP and the Karcher mean (mergekit 0.1.5's ``multislerp``
and ``karcher``).

Both treat each tensor as one flat vector and return a linear combination Σᵢ cᵢ·vᵢ of their
inputs, with coefficients that only depend on the inner products Gᵢⱼ = vᵢ·vⱼ. So the chunked
kernel makes one reduction pass for the Gram matrix (float64, added in offset order), runs the
method's algorithm on the k coefficients (the "vectors" in it are coefficient vectors c, with
‖Σ cᵢvᵢ‖² = cᵀGc), and writes Σᵢ cᵢ·vᵢ chunk by chunk: no tensor-sized temporary, whatever
the number of Karcher iterations. The pure functions run the same algorithms on the whole
tensors in float64.

Both passes run in compiled loops on CPU (`_spherical_fast`), with the torch path's values.
Since 2026-12-01 each chunk's Gram sums are added in a fixed order (1024 lanes, folded
pairwise) instead of torch's ``sum()``: G can differ in its last float64 bits from before,
which almost never changes a float32 coefficient (the benchmark merges are bit-identical to
before).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from merging.errors import IncompatibleModelsError
from merging.methods import _spherical_fast as fast
from merging.methods._base import MethodParams, SourceParams, register
from merging.methods._kernels import ELEMENTWISE_CHUNK, SUM_PART, Kernel
from merging.methods._ops import RandomStream
from merging.methods._vectors import Layout

# ---------------------------------------------------------------- Multi-SLERP


class MultiSlerpParams(MethodParams):
    normalize_weights: bool = True
    eps: float = Field(1e-8, ge=0)


def multislerp_coefficients(
    gram: Tensor, weights: Sequence[float], params: MultiSlerpParams, tensor: str
) -> Tensor:
    """Coefficients c (float64) of the Multi-SLERP result Σᵢ cᵢ·vᵢ, from the Gram matrix.

    With nᵢ = ‖vᵢ‖ and uᵢ = vᵢ/(nᵢ + ε) (w normalised to sum 1 with ``normalize_weights``):
    m = Σ wᵢuᵢ / ‖Σ wᵢuᵢ‖; τ = Σ wᵢ(uᵢ − (uᵢ·m)·m); r = m·cos‖τ‖ + τ·sin‖τ‖/‖τ‖ (‖τ‖ + ε in
    both); result (Σ wᵢnᵢ)·r. If ‖Σ wᵢuᵢ‖ < ε: two inputs are mixed linearly, w₁v₁ + w₂v₂; more
    raise `IncompatibleModelsError` (antipodal inputs whose weights cancel), as mergekit does —
    except when every vᵢ is zero (a tensor no fine-tune changed): then the result is 0 (the
    base), where mergekit raises.
    """
    w = torch.tensor(list(weights), dtype=torch.float64)
    if params.normalize_weights:
        w = w / w.sum()
    eps = params.eps
    norms = gram.diagonal().clamp(min=0).sqrt()
    unit = torch.diag(1 / (norms + eps))  # column i: uᵢ in the v basis
    mean = unit @ w
    mean_norm = max(float(mean @ gram @ mean), 0.0) ** 0.5  # ≥ 0 up to rounding
    if float(norms.max()) == 0:  # every input is zero (e.g. a tensor no fine-tune changed)
        return torch.zeros(len(weights), dtype=torch.float64)
    if mean_norm < eps:
        if len(weights) == 2:
            return w
        raise IncompatibleModelsError(
            f"multislerp: the weighted sum of the inputs' unit vectors is zero for tensor "
            f"{tensor} (antipodal inputs whose weights cancel); use other weights"
        )
    mean = mean / mean_norm
    dots = unit.T @ gram @ mean  # uᵢ·m
    tangent = mean * 0
    for i in range(len(weights)):
        tangent = tangent + w[i] * (unit[:, i] - dots[i] * mean)
    tangent_norm = max(float(tangent @ gram @ tangent), 0.0) ** 0.5 + eps
    result = mean * math.cos(tangent_norm) + tangent * (math.sin(tangent_norm) / tangent_norm)
    return result * float((norms * w).sum())


@register(
    "multislerp",
    params=MultiSlerpParams,
    formula="θ = [θ_base +] (Σᵢ wᵢ‖vᵢ‖)·exp_m(Σᵢ wᵢ·log_m(vᵢ/‖vᵢ‖)), m = normalised Σᵢ wᵢvᵢ/‖vᵢ‖",
    paper="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
    needs_base=False,
    optional_base=True,
    min_inputs=1,
    kernel=lambda p, s, rng, shape: GramKernel(
        lambda gram: multislerp_coefficients(gram, [x.weight for x in s], p, rng.tensor_name),
        len(s),
        shape,
    ),
    semantics=lambda p: (
        "Barycentric interpolation on the sphere: tangent space at the weighted mean of the unit "
        "vectors, back by the exponential map, scaled by the weighted mean norm; "
        + ("weights normalised to sum 1; " if p.normalize_weights else "weights as given; ")
        + f"ε = {p.eps}; with a base model the task vectors are interpolated."
    ),
)
def multislerp(
    base: Tensor | None,
    inputs: Sequence[Tensor],
    sources: Sequence[SourceParams],
    params: MultiSlerpParams,
    rng: RandomStream,
) -> Tensor:
    """Multi-SLERP (Goddard, 2025): barycentric interpolation of k ≥ 1 models on the sphere.

    θ = [θ_base +] (Σᵢ wᵢnᵢ)·(m·cos‖τ‖ + τ·sin‖τ‖/‖τ‖), as `multislerp_coefficients` states,
    over vᵢ = θᵢ − θ_base with a base model, else vᵢ = θᵢ. One input is returned as it is.
    Computed on the whole flattened tensors in float64.
    """
    if len(inputs) == 1:
        return inputs[0].clone()
    vectors = [(x if base is None else x - base).double().reshape(-1) for x in inputs]
    gram = torch.stack([torch.stack([a @ b for b in vectors]) for a in vectors])
    c = multislerp_coefficients(gram, [s.weight for s in sources], params, rng.tensor_name)
    out = sum(float(ci) * v for ci, v in zip(c, vectors, strict=True))
    assert isinstance(out, Tensor)
    result = out.float().reshape(inputs[0].shape)
    return result if base is None else base + result


# ---------------------------------------------------------------- Karcher mean


ANTIPODAL = 1e-7  # sin θ below this at θ ≈ π: the direction towards uᵢ is undefined; skipped


class KarcherParams(MethodParams):
    """``include_base`` (hubmerge's option): whether a ``base_model`` not listed under
    ``models:`` is one more point of the mean, as in mergekit 0.1.5 (true, the default), or is
    left out (false: only the listed models are averaged)."""

    max_iter: int = Field(10, ge=0)
    tol: float = Field(1e-5, ge=0)
    include_base: bool = True


def _counts_base(parameters: Mapping[str, Any]) -> bool:
    value = parameters.get("include_base", True)
    return not (value is False or value == 0)


def karcher_coefficients(gram: Tensor, params: KarcherParams) -> Tensor:
    """Coefficients c (float64) of the Karcher mean Σᵢ cᵢ·θᵢ, from the Gram matrix.

    Equal weights aᵢ = 1/k. Unit vectors uᵢ = θᵢ/‖θᵢ‖ of the inputs with ‖θᵢ‖ > tol (none: 0).
    Start: u = normalised Σ âᵢuᵢ (âᵢ the aᵢ renormalised over those inputs; u₁ if that sum is
    shorter than tol). Repeat ``max_iter`` times: T = Σ âᵢ·θᵢ/sin θᵢ·(uᵢ − cos θᵢ·u) over the
    inputs with θᵢ = arccos(clamp(u·uᵢ)) ≥ tol (and sin θᵢ ≥ 1e-7: an antipodal uᵢ, whose
    term mergekit computes as 0·∞, is skipped); stop if ‖T‖ < tol; u ← cos‖T‖·u + sin‖T‖·T/‖T‖,
    renormalised. Result: (Σᵢ aᵢ‖θᵢ‖)·u.
    """
    k = gram.shape[0]
    norms = gram.diagonal().clamp(min=0).sqrt()
    alphas = [1.0 / k] * k
    valid = [i for i in range(k) if float(norms[i]) > params.tol]
    if not valid:
        return torch.zeros(k, dtype=torch.float64)
    total = sum(alphas[i] for i in valid)
    weights = {i: alphas[i] / total for i in valid}
    units = {i: torch.eye(k, dtype=torch.float64)[i] / norms[i] for i in valid}

    def norm(c: Tensor) -> float:
        return max(float(c @ gram @ c), 0.0) ** 0.5

    u = sum(weights[i] * units[i] for i in valid)
    assert isinstance(u, Tensor)
    length = norm(u)
    u = units[valid[0]].clone() if length < params.tol else u / length
    for _ in range(params.max_iter):
        tangent = torch.zeros(k, dtype=torch.float64)
        for i in valid:
            dot = max(-1.0, min(1.0, float(u @ gram @ units[i])))
            theta = math.acos(dot)
            if theta < params.tol or math.sin(theta) < ANTIPODAL:
                continue
            tangent = tangent + weights[i] * (theta / math.sin(theta)) * (units[i] - dot * u)
        tangent_norm = norm(tangent)
        if tangent_norm < params.tol:
            break
        u = math.cos(tangent_norm) * u + math.sin(tangent_norm) * (tangent / tangent_norm)
        length = norm(u)
        if length > params.tol:
            u = u / length
    return u * sum(a * float(n) for a, n in zip(alphas, norms, strict=True))


@register(
    "karcher",
    params=KarcherParams,
    formula="θ = (Σᵢ ‖θᵢ‖/k)·argmin_u Σᵢ d(u, θᵢ/‖θᵢ‖)², d the geodesic distance on the sphere",
    paper="https://arxiv.org/abs/2603.04972",
    needs_base=False,
    base_as_point=_counts_base,
    min_inputs=1,
    kernel=lambda p, s, rng, shape: GramKernel(
        lambda gram: karcher_coefficients(gram, p), len(s), shape
    ),
    semantics=lambda p: (
        f"Riemannian (Karcher) mean of the unit vectors, equal weights, at most {p.max_iter} "
        f"fixed-point iterations, tolerance {p.tol}; scaled by the mean norm; each tensor is one "
        "flat vector; per-model weights are not used; "
        + (
            "a base_model not listed under models is one more point (as mergekit)."
            if p.include_base
            else "a base_model is not averaged (include_base: false)."
        )
    ),
)
def karcher(
    base: Tensor | None,
    inputs: Sequence[Tensor],
    sources: Sequence[SourceParams],
    params: KarcherParams,
    rng: RandomStream,
) -> Tensor:
    """Karcher mean of k models on the unit sphere, rescaled (mergekit's ``karcher``).

    The fixed-point iteration of `karcher_coefficients`, run on the whole flattened tensors in
    float64. Every input takes part with weight 1/k; one input is returned as it is. The
    inputs are the recipe's models and, unless ``include_base`` is false, an unlisted
    ``base_model`` after them (the plan's `merging.plan.merge_inputs`), as in mergekit 0.1.5.
    """
    if len(inputs) == 1:
        return inputs[0].clone()
    vectors = [x.double().reshape(-1) for x in inputs]
    norms = [float(v.norm()) for v in vectors]
    k = len(vectors)
    valid = [i for i in range(k) if norms[i] > params.tol]
    if not valid:
        return torch.zeros_like(inputs[0])
    total = sum(1.0 / k for _ in valid)
    weights = {i: (1.0 / k) / total for i in valid}
    units = {i: vectors[i] / norms[i] for i in valid}
    u = sum(weights[i] * units[i] for i in valid)
    assert isinstance(u, Tensor)
    length = float(u.norm())
    u = units[valid[0]].clone() if length < params.tol else u / length
    for _ in range(params.max_iter):
        tangent = torch.zeros_like(u)
        for i in valid:
            dot = max(-1.0, min(1.0, float(u @ units[i])))
            theta = math.acos(dot)
            if theta < params.tol or math.sin(theta) < ANTIPODAL:
                continue
            tangent += weights[i] * (theta / math.sin(theta)) * (units[i] - dot * u)
        tangent_norm = float(tangent.norm())
        if tangent_norm < params.tol:
            break
        u = math.cos(tangent_norm) * u + math.sin(tangent_norm) * (tangent / tangent_norm)
        length = float(u.norm())
        if length > params.tol:
            u = u / length
    scale = sum(n / k for n in norms)
    return (scale * u).float().reshape(inputs[0].shape)


# ---------------------------------------------------------------- the kernel


class GramKernel(Kernel):
    """One reduction pass for Gᵢⱼ = vᵢ·vⱼ (float64), then Σᵢ cᵢ·vᵢ per chunk with
    c = ``coefficients(G)``; vᵢ = θᵢ − θ_base when a base is given, else θᵢ. Both passes run
    in `_spherical_fast` (compiled loops on CPU, the same values in torch elsewhere): each
    chunk's products are added in 1024 lanes in element order, folded pairwise, and the chunks in
    offset order — before, a chunk's sums were torch's ``sum()``, whose order differs in the
    last bits of G. With the compiled loops the kernel takes chunks of up to 1M elements and
    sums each 256K-element part of them apart (`_spherical_fast.flat_parts`): the sums the
    engine's 256K chunks give, in a quarter of the calls."""

    reductions = 1
    raw_inputs = True  # bf16 chunks are read as they are stored

    def __init__(
        self, coefficients: Callable[[Tensor], Tensor], count: int, shape: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.coefficients = coefficients
        self.count = count
        self.pairs = [(i, j) for i in range(count) for j in range(i, count)]
        self.layout = Layout(shape, "flat")
        self.sums = fast.ChunkSums(self.layout, len(self.pairs))
        self.wait = self.layout.numel >= fast.WAIT_FOR_LOOPS
        self.c: list[float] = []
        self.table = torch.zeros(0)
        if count == 1:
            self.reductions = 0

    def prepare(self, base: Tensor | None, inputs: Sequence[Tensor]) -> None:
        if self.count > 1 and fast.wants(base, inputs, self.dtype, wait=self.wait):
            self.max_chunk = ELEMENTWISE_CHUNK  # (summed per `SUM_PART`: the same G)

    def reduce(self, step: int, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> None:
        parts = fast.flat_parts(base, inputs, self.pairs, offset, SUM_PART, dtype=self.dtype,
                                wait=self.wait)  # fmt: skip
        self.sums.put_all(parts)

    def end_pass(self, step: int) -> None:
        sums = self.sums.total()[:, 0]
        gram = torch.zeros(self.count, self.count, dtype=torch.float64)
        for (i, j), value in zip(self.pairs, sums, strict=True):
            gram[i, j] = gram[j, i] = value
        self.c = [float(x) for x in self.coefficients(gram)]
        self.table = torch.tensor(self.c, dtype=torch.float32).unsqueeze(1)  # as torch rounds

    def apply_into(
        self, base: Tensor | None, inputs: Sequence[Tensor], offset: int, out: Tensor
    ) -> bool:
        if self.count == 1:
            return False
        return fast.combine_into(self.layout, base, inputs, self.table, offset, out,
                                 dtype=self.dtype, wait=self.wait)  # fmt: skip

    def apply(self, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> Tensor:
        if self.count == 1:
            return inputs[0].clone()
        vectors = [x.to(self.dtype) for x in inputs]
        if base is not None:
            base = base.to(self.dtype)
            vectors = [v - base for v in vectors]
        out = vectors[0] * self.c[0]
        for c, v in zip(self.c[1:], vectors[1:], strict=True):
            out.add_(v, alpha=c)
        return out if base is None else out.add_(base)
