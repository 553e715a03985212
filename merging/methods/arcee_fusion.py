"""Arcee Fusion: take the other model's change only where it matters most (mergekit 0.1.5's
``arcee_fusion``, ``merge_methods/arcee_fusion.py``; no parameters).

With a = θ_base and b = θ₁, per row (the last dimension; a vector is one row):

    KL_row = Σⱼ pⱼ·log(pⱼ/qⱼ),  p = softmax(b_row) + 1e-8,  q = softmax(a_row) + 1e-8
    importanceⱼ = |bⱼ − aⱼ|·KL_row
    τ = Q₅₀ + 1.5·(Q₇₅ − Q₂₅) of the importances over the tensor,
        Q_q = the ⌊q·(n − 1)⌋-th smallest (0-based)
    θ = a + (b − a)·[importance ≥ τ]

Quantiles are exact over the whole tensor. mergekit computes them on 10⁶ elements sampled
with replacement from torch's global generator once a tensor has more than 10⁶ elements, so
there its threshold differs from this one by sampling noise; up to 10⁶ elements they agree
exactly. Softmaxes and KL sums are computed per row in float32 with mergekit's operations
(a row's KL, a sum of terms that nearly cancel, must round the same way for the elements next
to the threshold to fall on the same side).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from merging.methods._base import MethodParams, SourceParams, register
from merging.methods._kernels import Kernel
from merging.methods._ops import RandomStream
from merging.methods._vectors import CutRows, Layout, OrderStatistics, vectors_of

PROBABILITY_FLOOR = 1e-8
QUANTILES = (0.25, 0.5, 0.75)


def quantile_ranks(numel: int) -> list[int]:
    """0-based ascending ranks ⌊q·(n − 1)⌋ of Q₂₅, Q₅₀, Q₇₅ (float32 products, as mergekit)."""
    return [int(r) for r in (torch.tensor(QUANTILES) * (numel - 1)).long()]


def fusion_threshold(q1: Tensor, median: Tensor, q3: Tensor) -> Tensor:
    """τ = Q₅₀ + 1.5·(Q₇₅ − Q₂₅), in float32."""
    return median + 1.5 * (q3 - q1)


def row_kl(b_rows: Tensor, a_rows: Tensor) -> Tensor:
    """KL_row = Σⱼ pⱼ·log(pⱼ/qⱼ) per row (float32, mergekit's operations), clamped at 0 as +0.0
    (negative only by rounding; importances must be non-negative floats for the radix select)."""
    p = F.softmax(b_rows, dim=-1) + PROBABILITY_FLOOR
    q = F.softmax(a_rows, dim=-1) + PROBABILITY_FLOOR
    return torch.sum(p * torch.log(p / q), dim=-1).clamp(min=0).add_(0.0)


def importance_of(a: Tensor, b: Tensor) -> Tensor:
    """|b − a|·KL_row, rows along the last dimension."""
    rows_a, rows_b = vectors_of(a, "last"), vectors_of(b, "last")
    return ((rows_b - rows_a).abs_() * row_kl(rows_b, rows_a).unsqueeze(-1)).reshape(a.shape)


@register(
    "arcee_fusion",
    formula="θ = θ_base + (θ₁ − θ_base)·[|θ₁ − θ_base|·KL_row ≥ Q₅₀ + 1.5·IQR]",
    paper="https://github.com/arcee-ai/mergekit/blob/v0.1.5/mergekit/merge_methods/arcee_fusion.py",
    min_inputs=1,
    max_inputs=1,
    kernel=lambda p, s, rng, shape: ArceeFusionKernel(shape),
    semantics=lambda p: (
        "Importance = |θ₁ − θ_base| times the row's KL(softmax θ₁ ‖ softmax θ_base); keep the "
        "other model's change where importance ≥ median + 1.5·IQR (exact quantiles over the "
        "tensor; mergekit samples 10⁶ elements above 10⁶)."
    ),
)
def arcee_fusion(
    base: Tensor | None,
    inputs: Sequence[Tensor],
    sources: Sequence[SourceParams],
    params: MethodParams,
    rng: RandomStream,
) -> Tensor:
    """Arcee Fusion of the base and one other model (the module docstring's rule)."""
    assert base is not None
    other = inputs[0]
    importance = importance_of(base, other)
    ordered = importance.reshape(-1).sort().values
    q1, median, q3 = (ordered[r] for r in quantile_ranks(ordered.numel()))
    keep = importance >= fusion_threshold(q1, median, q3)
    return base + (other - base) * keep


class ArceeFusionKernel(Kernel):
    """Pass 0: KL per row, on each chunk's complete rows and, at the end of the pass, on the
    rows cut by chunk boundaries (kept aside meanwhile); passes 1–2: exact radix selects of the
    three quantiles of the importance; output pass: the masked change, elementwise."""

    reductions = 3

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.layout = Layout(shape, "last")
        self.cut = CutRows(self.layout.size)
        numel = max(1, math.prod(shape))
        self.quantiles = OrderStatistics([numel - r for r in quantile_ranks(numel)])
        self.kl = torch.zeros(self.layout.count)
        self.threshold = torch.tensor(0.0)

    def _importance(self, base: Tensor, other: Tensor, offset: int) -> Tensor:
        kl = self.layout.gather(self.kl.to(base.device), offset, base.numel())
        return (other - base).abs_().mul_(kl)

    def reduce(self, step: int, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> None:
        assert base is not None
        other = inputs[0]
        if step == 0:
            first, last = self.cut.complete(offset, base.numel())
            if first < last:
                inner = slice(first - offset, last - offset)
                cols = self.layout.size
                kl = row_kl(other[inner].reshape(-1, cols), base[inner].reshape(-1, cols))
                self.kl[first // cols : last // cols] = kl.cpu()  # disjoint rows: no lock
            self.cut.keep(offset, [base, other])
        else:
            self.quantiles.observe(step - 1, self._importance(base, other, offset))

    def end_pass(self, step: int) -> None:
        if step == 0:
            for row, (base_row, other_row) in self.cut.rows():
                self.kl[row] = row_kl(other_row.unsqueeze(0), base_row.unsqueeze(0))[0].cpu()
            return
        self.quantiles.end_pass(step - 1)
        if step == 2:
            self.threshold = fusion_threshold(*self.quantiles.values)

    def apply(self, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> Tensor:
        assert base is not None
        other = inputs[0]
        keep = self._importance(base, other, offset) >= self.threshold.to(base.device)
        return (other - base).mul_(keep).add_(base)
