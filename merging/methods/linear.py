"""Weighted average of the models themselves (model soups)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from merging.methods._base import MethodParams, SourceParams, register
from merging.methods._kernels import LinearKernel
from merging.methods._ops import RandomStream


class LinearParams(MethodParams):
    normalize: bool = True


def _semantics(p: LinearParams) -> str:
    if p.normalize:
        return "Weights are divided by their sum (a zero sum is left undivided)."
    return "Weights are used as given (no normalisation)."


@register(
    "linear",
    params=LinearParams,
    formula="θ = Σᵢ wᵢ·θᵢ / Σᵢ wᵢ  (uniform soup when all wᵢ = 1)",
    paper="https://arxiv.org/abs/2203.05482",
    needs_base=False,
    semantics=_semantics,
    kernel=lambda p, s, rng, shape: LinearKernel(p, s),
)
def linear(
    base: Tensor | None,
    inputs: Sequence[Tensor],
    sources: Sequence[SourceParams],
    params: LinearParams,
    rng: RandomStream,
) -> Tensor:
    """Model soup: the weighted average of the inputs (Wortsman et al., 2022).

    θ = Σᵢ wᵢ·θᵢ / Σᵢ wᵢ with ``normalize`` (default), else Σᵢ wᵢ·θᵢ. The base takes no part
    unless it is listed among the models.
    """
    weights = [s.weight for s in sources]
    total = torch.zeros_like(inputs[0])
    for weight, tensor in zip(weights, inputs, strict=True):
        total.add_(tensor, alpha=weight)
    divisor = sum(weights)
    if params.normalize and abs(divisor) > 1e-8:
        total.div_(divisor)
    return total
