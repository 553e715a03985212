"""Spherical linear interpolation between the base and one other model.

The statistics (‖v₀‖², ‖v₁‖², v₀·v₁ of each tensor as one flat vector) are float64 sums of
exact products, and the result is s₀·v₀ then one fused multiply-add of s₁·v₁ (s₀, s₁ rounded
to float32): the kernel runs NuSLERP's passes (`_spherical_fast`: compiled loops on CPU that
read bf16 as stored and write the output dtype into the output buffer; the same values in
torch elsewhere), with SLERP's own coefficients. Before this, a chunk's statistics were float32
``sum()``s and the result two rounded products added; outputs can differ from those in the
last bit of rare elements.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from pydantic import Field
from torch import Tensor

from merging.methods._base import MethodParams, SourceParams, register
from merging.methods._ops import PARALLEL_THRESHOLD, RandomStream
from merging.methods._vectors import Layout
from merging.methods.nuslerp import NuSlerpKernel

EPS = 1e-8


class SlerpParams(MethodParams):
    t: float = Field(ge=0, le=1)


def slerp_coefficients(
    t: float, squares0: float, squares1: float, dot: float
) -> tuple[float, float]:
    """(s₀, s₁) from ‖v₀‖², ‖v₁‖² and v₀·v₁: with Ω the angle between v₀ and v₁ (norms floored
    at 1e-8), sin((1−t)Ω)/sin Ω and sin(tΩ)/sin Ω; (1 − t, t) when |cos Ω| > 0.9995 (as
    mergekit's ``lerp`` there)."""
    n0 = max(math.sqrt(squares0), EPS)
    n1 = max(math.sqrt(squares1), EPS)
    cos = dot / (n0 * n1)
    if abs(cos) > PARALLEL_THRESHOLD:
        return 1.0 - t, t
    omega = math.acos(max(-1.0, min(1.0, cos)))
    sin_omega = math.sin(omega)
    return math.sin((1 - t) * omega) / sin_omega, math.sin(t * omega) / sin_omega


def slerp_tensors(t: float, v0: Tensor, v1: Tensor) -> Tensor:
    """Slerp of two tensors seen as flat vectors; linear interpolation when nearly parallel.

    With Ω the angle between v0/‖v0‖ and v1/‖v1‖: sin((1−t)Ω)/sin Ω · v0 + sin(tΩ)/sin Ω · v1.
    When |cos Ω| > 0.9995 the result is (1−t)·v0 + t·v1 (as mergekit does). Statistics in
    float64 (`slerp_coefficients`), the result in v0's dtype.
    """
    a, b = v0.double().flatten(), v1.double().flatten()
    s0, s1 = slerp_coefficients(t, float(a @ a), float(b @ b), float(a @ b))
    return v0 * s0 + v1 * s1


class SlerpKernel(NuSlerpKernel):
    """NuSLERP's passes over (θ_base, θ₁) as the two vectors, no base subtracted; SLERP's
    coefficients (`slerp_coefficients`) between them."""

    def __init__(self, t: float, shape: Sequence[int]) -> None:
        super().__init__(t, Layout(shape, "flat"))

    def reduce(self, step: int, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> None:
        assert base is not None
        super().reduce(step, None, [base, inputs[0]], offset)

    def end_pass(self, step: int) -> None:
        squares0, squares1, dot = (float(v) for v in self.sums.total()[:, 0])
        s0, s1 = slerp_coefficients(self.t, squares0, squares1, dot)
        self.s0 = torch.tensor([s0], dtype=torch.float32)
        self.s1 = torch.tensor([s1], dtype=torch.float32)
        self.coefficients = torch.stack([self.s0, self.s1])

    def apply_into(
        self, base: Tensor | None, inputs: Sequence[Tensor], offset: int, out: Tensor
    ) -> bool:
        assert base is not None
        return super().apply_into(None, [base, inputs[0]], offset, out)

    def apply(self, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> Tensor:
        assert base is not None
        return super().apply(None, [base, inputs[0]], offset)


@register(
    "slerp",
    params=SlerpParams,
    formula="θ = sin((1−t)Ω)/sin Ω·θ_base + sin(tΩ)/sin Ω·θ₁, Ω = angle(θ_base, θ₁)",
    paper="https://dl.acm.org/doi/10.1145/325165.325242",
    min_inputs=1,
    max_inputs=1,
    kernel=lambda p, s, rng, shape: SlerpKernel(p.t, shape),
    semantics=lambda p: (
        "t = 0 gives the base, t = 1 the other model; each tensor is one flat vector "
        "(‖v‖², v₀·v₁ as float64 sums); falls back to linear interpolation when "
        f"|cos Ω| > {PARALLEL_THRESHOLD}; s₀·v₀ then one fused multiply-add of s₁·v₁."
    ),
)
def slerp(
    base: Tensor | None,
    inputs: Sequence[Tensor],
    sources: Sequence[SourceParams],
    params: SlerpParams,
    rng: RandomStream,
) -> Tensor:
    """SLERP from the base (t = 0) to the single other model (t = 1)."""
    assert base is not None
    return slerp_tensors(params.t, base, inputs[0])
