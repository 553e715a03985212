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
from merging.methods._bit_select import (
    HIGH_BUCKETS,
    LOW_BUCKETS,
    from_halves,
    high_half,
    kth_from_top,
    low_half,
)
from merging.methods._kernels import Kernel
from merging.methods._ops import RandomStream
from merging.methods._vectors import CutRows, Layout, vectors_of

PROBABILITY_FLOOR = 1e-8
QUANTILES = (0.25, 0.5, 0.75)
NON_FINITE = 0x7F80  # high halves of inf and NaN


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
    rows cut by chunk boundaries (kept aside meanwhile). Passes 1–2: exact radix selects of the
    three quantiles of the importance (`_bit_select`): pass 1 histograms the high 16 bits of
    the importances and keeps them (two bytes per element); pass 2 recomputes the importance
    only of the elements in the quantiles' high buckets, for their low bits. Output pass: the
    mask [importance ≥ τ] from the kept high halves, recomputing only τ's high bucket."""

    reductions = 3

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.layout = Layout(shape, "last")
        self.cut = CutRows(self.layout.size)
        numel = max(1, math.prod(shape))
        self.ks = [numel - r for r in quantile_ranks(numel)]  # ranks from the top
        self.kl = torch.zeros(self.layout.count)
        self.high_counts = torch.zeros(HIGH_BUCKETS, dtype=torch.int64)
        self.targets: list[tuple[int, int]] = []  # per quantile: (high bucket, rank in it)
        self.low_counts: dict[int, Tensor] = {}  # high bucket → histogram of low halves
        self.highs: dict[int, Tensor] = {}  # offset → high halves of the importances (int16)
        self.threshold = torch.tensor(0.0)
        self.threshold_high = 0

    def _importance(self, base: Tensor, other: Tensor, offset: int) -> Tensor:
        kl = self.layout.gather(self.kl.to(base.device), offset, base.numel())
        return (other - base).abs_().mul_(kl)

    def _importance_at(self, base: Tensor, other: Tensor, offset: int, positions: Tensor) -> Tensor:
        """The importances of the chunk's elements at ``positions`` (the same values)."""
        rows = (positions + offset) // self.layout.size
        kl = self.kl.to(base.device)[rows]
        return (other[positions] - base[positions]).abs_().mul_(kl)

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
        elif step == 1:
            high = high_half(self._importance(base, other, offset))
            counts = torch.bincount(high, minlength=HIGH_BUCKETS).cpu()
            with self.lock:
                self.high_counts += counts
                self.highs[offset] = high.to(torch.int16)
        else:
            with self.lock:
                high = self.highs[offset]
            buckets = list(self.low_counts)
            inside = high == buckets[0]
            for bucket in buckets[1:]:
                inside |= high == bucket
            positions = inside.nonzero().squeeze(1)
            if positions.numel() == 0:
                return
            low = low_half(self._importance_at(base, other, offset, positions))
            found = high[positions]
            for bucket in buckets:
                counts = torch.bincount(low[found == bucket], minlength=LOW_BUCKETS).cpu()
                with self.lock:
                    self.low_counts[bucket] += counts

    def end_pass(self, step: int) -> None:
        if step == 0:
            for row, (base_row, other_row) in self.cut.rows():
                self.kl[row] = row_kl(other_row.unsqueeze(0), base_row.unsqueeze(0))[0].cpu()
        elif step == 1:
            self.targets = [kth_from_top(self.high_counts, k) for k in self.ks]
            self.low_counts = {b: torch.zeros(LOW_BUCKETS, dtype=torch.int64)
                               for b, _ in self.targets}  # fmt: skip
        else:
            values = [
                from_halves(bucket, kth_from_top(self.low_counts[bucket], need)[0])
                for bucket, need in self.targets
            ]
            self.threshold = fusion_threshold(*values)
            self.threshold_high = int(high_half(self.threshold.reshape(1))[0])

    def apply(self, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> Tensor:
        assert base is not None
        other = inputs[0]
        with self.lock:
            high = self.highs.pop(offset)
        keep = high > self.threshold_high
        undecided = (high == self.threshold_high) | (high >= NON_FINITE)  # NaN ≥ τ is false
        positions = undecided.nonzero().squeeze(1)
        if positions.numel():
            importance = self._importance_at(base, other, offset, positions)
            keep[positions] = importance >= self.threshold.to(base.device)
        return (other - base).mul_(keep).add_(base)
