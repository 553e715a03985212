"""Model Stock (Jang et al., 2024): interpolate between the base and the fine-tunes' average
by a ratio set from the angle between their task vectors.

For k ≥ 2 fine-tunes with task vectors δᵢ = θᵢ − θ_base, per tensor (or per row with
``filter_wise``):

    cos θ = mean over pairs i < j of clamp(δᵢ·δⱼ / max(‖δᵢ‖‖δⱼ‖, 1e-6), −1, 1)
    t = k·cos θ / (1 + (k − 1)·cos θ)           (t = 0 where |1 + (k − 1)·cos θ| < 1e-6)
    θ = t·(Σᵢ θᵢ)/k + (1 − t)·θ_base

as mergekit 0.1.5 computes it (the paper's Eq. 2 with the pairwise-mean angle). Per-model
weights are not used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import torch
from torch import Tensor

from merging.methods._base import MethodParams, SourceParams, register
from merging.methods._kernels import Kernel
from merging.methods._ops import RandomStream, delta_of

NORM_FLOOR = 1e-6
SINGULAR = 1e-6


class ModelStockParams(MethodParams):
    filter_wise: bool = False


def stock_ratio(cos: Tensor, k: int) -> Tensor:
    """t = k·cos / (1 + (k − 1)·cos), and 0 where the denominator vanishes (keep the base)."""
    denominator = 1 + (k - 1) * cos
    singular = denominator.abs() < SINGULAR
    safe = torch.where(singular, torch.ones_like(denominator), denominator)
    return torch.where(singular, torch.zeros_like(cos), k * cos / safe)


def mean_pair_cosine(norms: Sequence[Tensor], dots: dict[tuple[int, int], Tensor]) -> Tensor:
    """Mean over pairs of clamp(δᵢ·δⱼ / max(‖δᵢ‖‖δⱼ‖, 1e-6), −1, 1)."""
    cosines = [
        (dot / (norms[i] * norms[j]).clamp(min=NORM_FLOOR)).clamp(-1, 1)
        for (i, j), dot in dots.items()
    ]
    return torch.stack(cosines).mean(dim=0)


@register(
    "model_stock",
    params=ModelStockParams,
    formula="θ = t·mean(θᵢ) + (1 − t)·θ_base, t = k·cos θ / (1 + (k − 1)·cos θ)",
    paper="https://arxiv.org/abs/2403.19522",
    min_inputs=2,
    kernel=lambda p, s, rng, shape: ModelStockKernel(len(s), shape, p.filter_wise),
    semantics=lambda p: (
        "cos θ = mean pairwise cosine of the task vectors "
        + ("per row (filter_wise)" if p.filter_wise else "per tensor (flattened)")
        + "; t = 0 where 1 + (k − 1)·cos θ ≈ 0; per-model weights are not used."
    ),
)
def model_stock(
    base: Tensor | None,
    inputs: Sequence[Tensor],
    sources: Sequence[SourceParams],
    params: ModelStockParams,
    rng: RandomStream,
) -> Tensor:
    assert base is not None
    if len(inputs) < 2:
        raise ValueError("model_stock needs at least two models besides the base")
    shape = base.shape
    if params.filter_wise:
        rows = base.unsqueeze(0) if base.dim() <= 1 else base
        others = [x.reshape(rows.shape) for x in inputs]
    else:
        rows = base.reshape(-1)
        others = [x.reshape(-1) for x in inputs]
    deltas = [(x - rows).double() for x in others]  # statistics in float64, as the kernel's
    norms = [d.norm(dim=-1) for d in deltas]
    pairs = combinations(range(len(deltas)), 2)
    dots = {(i, j): (deltas[i] * deltas[j]).sum(dim=-1) for i, j in pairs}
    t = stock_ratio(mean_pair_cosine(norms, dots), len(inputs)).unsqueeze(-1).to(base.dtype)
    average = sum(others) / len(others)
    return (t * average + (1 - t) * rows).reshape(shape)


class ModelStockKernel(Kernel):
    """One reduction pass gathers ‖δᵢ‖² and δᵢ·δⱼ per row of the angle (the whole flattened
    tensor, or with ``filter_wise`` each vector along the last dim), chunk by chunk in float64
    and summed in offset order; then each output chunk is t·mean(θᵢ) + (1 − t)·θ_base with the
    t of each element's row."""

    reductions = 1

    def __init__(self, count: int, shape: tuple[int, ...], filter_wise: bool) -> None:
        super().__init__()
        numel = math.prod(shape)
        self.count = count
        self.pairs = list(combinations(range(count), 2))
        self.cols = max(1, shape[-1] if filter_wise and len(shape) >= 2 else numel)
        self.rows = max(1, numel // self.cols)
        self.parts: dict[int, tuple[int, Tensor]] = {}  # offset → (first row, stats × rows)
        self.t = torch.zeros(self.rows)

    def _rows_of(self, offset: int, length: int, device: torch.device) -> Tensor:
        return torch.arange(offset, offset + length, device=device) // self.cols

    def reduce(self, step: int, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> None:
        assert base is not None
        deltas = [delta_of(x, base).double() for x in inputs]
        products = [d * d for d in deltas] + [deltas[i] * deltas[j] for i, j in self.pairs]
        first, last = offset // self.cols, (offset + base.numel() - 1) // self.cols
        if first == last:
            stats = torch.stack([p.sum() for p in products]).unsqueeze(1)
        else:
            rows = self._rows_of(offset, base.numel(), base.device) - first
            stats = torch.zeros(len(products), last - first + 1, dtype=torch.float64,
                                device=base.device)  # fmt: skip
            for k, product in enumerate(products):
                stats[k].index_add_(0, rows, product)
        with self.lock:
            self.parts[offset] = (first, stats.cpu())

    def end_pass(self, step: int) -> None:
        sums = torch.zeros(self.count + len(self.pairs), self.rows, dtype=torch.float64)
        for _, (first, stats) in sorted(self.parts.items()):
            sums[:, first : first + stats.shape[1]] += stats
        self.parts.clear()
        norms = list(sums[: self.count].sqrt())
        dots = dict(zip(self.pairs, sums[self.count :], strict=True))
        self.t = stock_ratio(mean_pair_cosine(norms, dots), self.count).float()

    def apply(self, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> Tensor:
        assert base is not None
        average = inputs[0].to(self.dtype, copy=True)
        for x in inputs[1:]:
            average.add_(x)
        average.div_(self.count)
        base = base.to(self.dtype)
        if self.rows == 1:
            scalar = float(self.t[0])
            return average.mul_(scalar).add_(base, alpha=1 - scalar)
        t = self.t.to(base.device)[self._rows_of(offset, base.numel(), base.device)]
        return average.mul_(t).add_(base * (1 - t))
