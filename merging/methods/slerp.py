"""Spherical linear interpolation between the base and one other model."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from pydantic import Field
from torch import Tensor

from merging.methods._base import MethodParams, SourceParams, register
from merging.methods._kernels import SlerpKernel
from merging.methods._ops import PARALLEL_THRESHOLD, RandomStream

EPS = 1e-8


class SlerpParams(MethodParams):
    t: float = Field(ge=0, le=1)


def slerp_tensors(t: float, v0: Tensor, v1: Tensor) -> Tensor:
    """Slerp of two tensors seen as flat vectors; linear interpolation when nearly parallel.

    With Ω the angle between v0/‖v0‖ and v1/‖v1‖: sin((1−t)Ω)/sin Ω · v0 + sin(tΩ)/sin Ω · v1.
    When |cos Ω| > 0.9995 the result is (1−t)·v0 + t·v1 (as mergekit does).
    """
    n0 = v0 / v0.norm().clamp_min(EPS)
    n1 = v1 / v1.norm().clamp_min(EPS)
    dot = float((n0 * n1).sum())
    if abs(dot) > PARALLEL_THRESHOLD:
        return torch.lerp(v0, v1, t)
    omega = math.acos(max(-1.0, min(1.0, dot)))
    sin_omega = math.sin(omega)
    s0 = math.sin((1 - t) * omega) / sin_omega
    s1 = math.sin(t * omega) / sin_omega
    return s0 * v0 + s1 * v1


@register(
    "slerp",
    params=SlerpParams,
    formula="θ = sin((1−t)Ω)/sin Ω·θ_base + sin(tΩ)/sin Ω·θ₁, Ω = angle(θ_base, θ₁)",
    paper="https://dl.acm.org/doi/10.1145/325165.325242",
    min_inputs=1,
    max_inputs=1,
    kernel=lambda p, s, rng, shape: SlerpKernel(p),
    semantics=lambda p: (
        "t = 0 gives the base, t = 1 the other model; each tensor is one flat vector; "
        f"falls back to linear interpolation when |cos Ω| > {PARALLEL_THRESHOLD}."
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
