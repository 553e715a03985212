"""NuSLERP: spherical interpolation of two models (or of their task vectors), per tensor, row
or column, with the interpolation factor taken from the two models' weights.

mergekit 0.1.5's ``nuslerp`` (``merge_methods/nuslerp.py``), same parameter names:

- ``weight`` (per model): t = w₂ / (w₁ + w₂), and t = ½ when |w₁ + w₂| < 1e-6;
- ``nuslerp_flatten`` (default true): each tensor is one flat vector; when false, vectors run
  along the last dimension (each row), or with ``nuslerp_row_wise`` (default false) along the
  first (each column: mergekit transposes dims 0 and −1);
- with a base model, the task vectors vᵢ = θᵢ − θ_base are interpolated and the base added
  back (SLERP of task vectors); without one, the models themselves.

Unlike ``slerp`` there is no |cos Ω| > 0.9995 cut-off: NuSLERP falls back to linear
interpolation only where 1 − cos²Ω ≤ 10⁻¹⁶ (sin Ω ≈ 0).

The chunked kernel (`NuSlerpKernel`) runs in compiled loops on CPU (`_spherical_fast`), with
the torch path's values. Since 2026-12-01 a flat tensor's float64 statistics are added in a
fixed order (1024 lanes per chunk, folded pairwise) instead of torch's ``sum()``: they can
differ in their last bits from before, which almost never changes a float32 coefficient (the
benchmark merges are bit-identical to before).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from merging.methods import _spherical_fast as fast
from merging.methods._base import MethodParams, SourceParams, register
from merging.methods._kernels import Kernel
from merging.methods._ops import RandomStream
from merging.methods._vectors import Along, Layout, from_vectors, vectors_of

NORM_FLOOR = 1e-7  # mergekit's normalisation clamp
COLINEAR = 1e-8  # sin Ω at or below this: linear interpolation


class NuSlerpParams(MethodParams):
    nuslerp_row_wise: bool = False
    nuslerp_flatten: bool = True


def interpolation_factor(sources: Sequence[SourceParams]) -> float:
    """t = w₂ / (w₁ + w₂), or ½ when the weights cancel (|w₁ + w₂| < 1e-6)."""
    first, second = (s.weight for s in sources)
    total = first + second
    return 0.5 if abs(total) < 1e-6 else second / total


def along(params: NuSlerpParams) -> Along:
    if params.nuslerp_flatten:
        return "flat"
    return "first" if params.nuslerp_row_wise else "last"


def slerp_coefficients(t: float, sums: Tensor) -> tuple[Tensor, Tensor]:
    """Per vector (s₀, s₁) with result s₀·v₀ + s₁·v₁, from float64 rows ‖v₀‖², ‖v₁‖², v₀·v₁.

    cos Ω = v₀·v₁ / (max(‖v₀‖, 1e-7)·max(‖v₁‖, 1e-7)), clamped to [−1, 1];
    s₀ = sin((1 − t)Ω)/sin Ω, s₁ = sin(tΩ)/sin Ω, or (1 − t, t) where 1 − cos²Ω ≤ 10⁻¹⁶.
    """
    n0 = sums[0].sqrt().clamp(min=NORM_FLOOR)
    n1 = sums[1].sqrt().clamp(min=NORM_FLOOR)
    cos = (sums[2] / (n0 * n1)).clamp(-1, 1)
    colinear = (1 - cos * cos) <= COLINEAR**2
    theta = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))
    sin = torch.where(colinear, torch.ones_like(theta), torch.sin(theta))
    s0 = torch.where(colinear, torch.full_like(cos, 1 - t), torch.sin((1 - t) * theta) / sin)
    s1 = torch.where(colinear, torch.full_like(cos, t), torch.sin(t * theta) / sin)
    return s0.float(), s1.float()


@register(
    "nuslerp",
    params=NuSlerpParams,
    formula="θ = [θ_base +] sin((1−t)Ω)/sin Ω·v₁ + sin(tΩ)/sin Ω·v₂, t = w₂/(w₁+w₂), "
    "vᵢ = θᵢ [− θ_base]",
    paper="https://github.com/arcee-ai/mergekit/blob/v0.1.5/mergekit/merge_methods/nuslerp.py",
    needs_base=False,
    optional_base=True,
    min_inputs=2,
    max_inputs=2,
    kernel=lambda p, s, rng, shape: NuSlerpKernel(interpolation_factor(s), Layout(shape, along(p))),
    semantics=lambda p: (
        "t = w₂/(w₁ + w₂) (½ when the weights cancel); with a base model the task vectors are "
        "interpolated; vectors: "
        + {"flat": "each tensor flattened", "last": "each row", "first": "each column"}[along(p)]
        + "; linear interpolation where sin Ω ≤ 1e-8."
    ),
)
def nuslerp(
    base: Tensor | None,
    inputs: Sequence[Tensor],
    sources: Sequence[SourceParams],
    params: NuSlerpParams,
    rng: RandomStream,
) -> Tensor:
    """NuSLERP of two models, or of their task vectors around ``base`` (mergekit's ``nuslerp``).

    θ = [θ_base +] s₀·v₀ + s₁·v₁ per vector, with (s₀, s₁) from `slerp_coefficients` and
    t = w₂/(w₁ + w₂). Statistics in float64 (as the kernel), result in float32.
    """
    t = interpolation_factor(sources)
    first, second = (x if base is None else x - base for x in inputs)
    layout = along(params)
    v0, v1 = vectors_of(first, layout).double(), vectors_of(second, layout).double()
    sums = torch.stack([(v0 * v0).sum(-1), (v1 * v1).sum(-1), (v0 * v1).sum(-1)])
    s0, s1 = slerp_coefficients(t, sums)
    rows = s0.unsqueeze(-1) * vectors_of(first, layout) + s1.unsqueeze(-1) * vectors_of(
        second, layout
    )
    out = from_vectors(rows, first.shape, layout)
    return out if base is None else base + out


class NuSlerpKernel(Kernel):
    """One reduction pass gathers ‖v₀‖², ‖v₁‖², v₀·v₁ per vector (float64), the output pass is
    s₀·v₀ + s₁·v₁ with each element's vector's coefficients (`_spherical_fast`: compiled loops
    on CPU, the same values in torch elsewhere). Rows and columns add their elements in
    element order (as ``index_add_``); a flat tensor adds each chunk in 8 lanes, folded
    pairwise (`_spherical_fast.chunk_sums`) — before, a chunk's flat sums were torch's
    ``sum()``, whose order differs in the last bits of the float64 statistics."""

    reductions = 1
    raw_inputs = True  # bf16 chunks are read as they are stored
    PAIRS = ((0, 0), (1, 1), (0, 1))

    def __init__(self, t: float, layout: Layout) -> None:
        super().__init__()
        self.t = t
        self.layout = layout
        self.sums = fast.ChunkSums(layout, 3)
        self.wait = layout.numel >= fast.WAIT_FOR_LOOPS
        self.s0 = self.s1 = self.coefficients = torch.zeros(0)

    def reduce(self, step: int, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> None:
        part = fast.chunk_sums(self.layout, base, inputs, self.PAIRS, offset, dtype=self.dtype,
                               wait=self.wait)  # fmt: skip
        self.sums.put(offset, part)

    def end_pass(self, step: int) -> None:
        self.s0, self.s1 = slerp_coefficients(self.t, self.sums.total())
        self.coefficients = torch.stack([self.s0, self.s1])

    def apply_into(
        self, base: Tensor | None, inputs: Sequence[Tensor], offset: int, out: Tensor
    ) -> bool:
        return fast.combine_into(self.layout, base, inputs, self.coefficients, offset, out,
                                 dtype=self.dtype, wait=self.wait)  # fmt: skip

    def apply(self, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> Tensor:
        first, second = (x.to(self.dtype) for x in inputs)
        if base is not None:
            base = base.to(self.dtype)
            first, second = first - base, second - base
        device = first.device
        s0 = self.layout.gather(self.s0.to(device), offset, first.numel())
        s1 = self.layout.gather(self.s1.to(device), offset, first.numel())
        out = first.mul_(s0) if base is not None else first * s0
        out.addcmul_(second, s1)
        return out if base is None else out.add_(base)
