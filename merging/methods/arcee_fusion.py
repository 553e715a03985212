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
there its threshold differs from this one by sampling noise; up to 10⁶ elements they agree.
Softmaxes and KL sums are computed in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from merging.methods._base import MethodParams, SourceParams, register
from merging.methods._kernels import Kernel
from merging.methods._ops import RandomStream
from merging.methods._select import RadixSelect
from merging.methods._vectors import Layout, VectorSums, vectors_of

PROBABILITY_FLOOR = 1e-8
QUANTILES = (0.25, 0.5, 0.75)


def quantile_ranks(numel: int) -> list[int]:
    """0-based ascending ranks ⌊q·(n − 1)⌋ of Q₂₅, Q₅₀, Q₇₅ (float32 products, as mergekit)."""
    return [int(r) for r in (torch.tensor(QUANTILES) * (numel - 1)).long()]


def fusion_threshold(q1: Tensor, median: Tensor, q3: Tensor) -> Tensor:
    """τ = Q₅₀ + 1.5·(Q₇₅ − Q₂₅), in float32."""
    return median + 1.5 * (q3 - q1)


def kl_terms(b: Tensor, a: Tensor, lse_b: Tensor, lse_a: Tensor) -> Tensor:
    """pⱼ·log(pⱼ/qⱼ) in float64, p = exp(b − lse_b) + 1e-8, q = exp(a − lse_a) + 1e-8."""
    p = (b.double() - lse_b).exp_().add_(PROBABILITY_FLOOR)
    q = (a.double() - lse_a).exp_().add_(PROBABILITY_FLOOR)
    return p * (p / q).log_()


def clamp_kl(kl: Tensor) -> Tensor:
    """KL ≥ 0 (it is negative only by rounding), as +0.0 rather than −0.0: importances must be
    non-negative floats for the radix select."""
    return kl.clamp(min=0).add_(0.0)


def importance_of(a: Tensor, b: Tensor) -> Tensor:
    """|b − a|·KL_row, rows along the last dimension."""
    rows_a, rows_b = vectors_of(a, "last"), vectors_of(b, "last")
    lse_a = torch.logsumexp(rows_a.double(), dim=-1, keepdim=True)
    lse_b = torch.logsumexp(rows_b.double(), dim=-1, keepdim=True)
    kl = clamp_kl(kl_terms(rows_b, rows_a, lse_b, lse_a).sum(-1, keepdim=True).float())
    return ((rows_b - rows_a).abs_() * kl).reshape(a.shape)


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
    """Pass 0: each row's log-sum-exp of θ_base and θ₁ (per chunk max and Σ exp, combined in
    offset order); pass 1: KL per row (float64 sums); passes 2–3: exact radix selects of the
    three quantiles of the importance; output pass: the masked change, elementwise."""

    reductions = 4

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.layout = Layout(shape, "last")
        numel = max(1, math.prod(shape))
        self.selectors = [RadixSelect(numel - r) for r in quantile_ranks(numel)]
        self.lse_parts: dict[int, tuple[int, Tensor, Tensor]] = {}
        self.lse = torch.zeros(2, self.layout.count, dtype=torch.float64)
        self.kl_sums = VectorSums(self.layout, 1)
        self.kl = torch.zeros(self.layout.count)
        self.threshold = torch.tensor(0.0)

    def _lse_part(self, x: Tensor, offset: int) -> tuple[Tensor, Tensor]:
        """Per row of the chunk: (max, Σ exp(x − max)) in float64."""
        index = self.layout.index(offset, x.numel(), x.device)
        values = x.double()
        if index is None:
            top = values.max().reshape(1)
            return top.cpu(), (values - top).exp_().sum().reshape(1).cpu()
        _, count = self.layout.span(offset, x.numel())
        top = torch.full((count,), -math.inf, dtype=torch.float64, device=x.device)
        top.scatter_reduce_(0, index, values, "amax")
        sums = torch.zeros(count, dtype=torch.float64, device=x.device)
        sums.index_add_(0, index, (values - top[index]).exp_())
        return top.cpu(), sums.cpu()

    def _row_values(self, values: Tensor, offset: int, length: int, device: torch.device) -> Tensor:
        return self.layout.gather(values.to(device), offset, length)

    def _importance(self, base: Tensor, other: Tensor, offset: int) -> Tensor:
        kl = self._row_values(self.kl, offset, base.numel(), base.device)
        return (other - base).abs_().mul_(kl)

    def reduce(self, step: int, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> None:
        assert base is not None
        other = inputs[0]
        if step == 0:
            first, _ = self.layout.span(offset, base.numel())
            top_a, sum_a = self._lse_part(base, offset)
            top_b, sum_b = self._lse_part(other, offset)
            with self.lock:
                self.lse_parts[offset] = (first, torch.stack([top_a, top_b]),
                                          torch.stack([sum_a, sum_b]))  # fmt: skip
        elif step == 1:
            lse_a = self._row_values(self.lse[0], offset, base.numel(), base.device)
            lse_b = self._row_values(self.lse[1], offset, base.numel(), base.device)
            self.kl_sums.add([kl_terms(other, base, lse_b, lse_a)], offset)
        else:
            importance = self._importance(base, other, offset)
            for selector in self.selectors:
                selector.observe(step - 2, importance)

    def end_pass(self, step: int) -> None:
        if step == 0:
            top = torch.full((2, self.layout.count), -math.inf, dtype=torch.float64)
            parts = sorted(self.lse_parts.items())
            for _, (first, tops, _) in parts:
                window = top[:, first : first + tops.shape[1]]
                torch.maximum(window, tops, out=window)
            sums = torch.zeros_like(top)
            for _, (first, tops, part) in parts:
                span = slice(first, first + tops.shape[1])
                sums[:, span] += part * (tops - top[:, span]).exp()
            self.lse = top + sums.log()
            self.lse_parts.clear()
        elif step == 1:
            self.kl = clamp_kl(self.kl_sums.total()[0].float())
        else:
            for selector in self.selectors:
                selector.end_pass(step - 2)
            if step == 3:
                q1, median, q3 = (s.threshold for s in self.selectors)
                self.threshold = fusion_threshold(q1, median, q3)

    def apply(self, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> Tensor:
        assert base is not None
        other = inputs[0]
        keep = self._importance(base, other, offset) >= self.threshold.to(base.device)
        return (other - base).mul_(keep).add_(base)
