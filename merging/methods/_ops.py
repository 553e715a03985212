"""Pure tensor helpers the merge methods are composed of.

Every function takes and returns tensors, never mutates its inputs, and draws randomness
only from the generator it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

Rescale = Literal["none", "l1", "density"]


def task_vectors(base: Tensor, inputs: Sequence[Tensor]) -> list[Tensor]:
    """δᵢ = θᵢ − θ_base for every input."""
    return [x - base for x in inputs]


def keep_count(numel: int, density: float) -> int:
    """Number of elements kept at ``density``: ⌊density·n⌋, at least 1 (mergekit and PEFT)."""
    return max(1, int(density * numel))


def magnitude_threshold(delta: Tensor, density: float) -> Tensor:
    """The k-th largest |δ| for k = ⌊density·n⌋ (a `kthvalue`, no full sort)."""
    magnitudes = delta.abs().reshape(-1)
    k = keep_count(magnitudes.numel(), density)
    return magnitudes.kthvalue(magnitudes.numel() - k + 1).values


def prune_magnitude(delta: Tensor, density: float) -> Tensor:
    """Keep the elements whose |δ| is at least the k-th largest magnitude; zero the rest.

    Ties rule: every element equal to the threshold is kept, so on low-precision deltas where
    many elements share the threshold value slightly more than k survive. The result never
    depends on element order (a sort-based top-k keeps an arbitrary subset of the ties).
    """
    if density >= 1:
        return delta
    threshold = magnitude_threshold(delta, density)
    return torch.where(delta.abs() >= threshold, delta, torch.zeros((), dtype=delta.dtype))


def prune_magnitude_outliers(delta: Tensor, density: float, gamma: float) -> Tensor:
    """Model Breadcrumbs: drop the ``gamma`` share of largest |δ| and the smallest ones.

    Keeps ranks [n − k_top − k_keep, n − k_top) of |δ| in ascending order, where
    k_keep = ⌊density·n⌋ and k_top = ⌊gamma·n⌋ (cut down so that density is met).
    """
    if density >= 1:
        return delta
    magnitudes = delta.abs().reshape(-1)
    n = magnitudes.numel()
    keep = keep_count(n, density)
    top = min(int(gamma * n), n - keep)
    order = magnitudes.argsort(stable=True)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[n - top - keep : n - top]] = True
    return torch.where(mask.reshape(delta.shape), delta, torch.zeros((), dtype=delta.dtype))


def bernoulli_mask(shape: torch.Size, density: float, rng: torch.Generator) -> Tensor:
    """A boolean mask with each element kept with probability ``density``."""
    return torch.rand(shape, generator=rng) < density


def prune_random(delta: Tensor, density: float, rng: torch.Generator, rescale: Rescale) -> Tensor:
    """DARE: drop each element with probability 1 − density, then rescale.

    Rescale rules: ``density`` divides the survivors by the density (the DARE paper, PEFT);
    ``l1`` scales the survivors so that the L1 norm of δ is unchanged (mergekit);
    ``none`` leaves them as they are.
    """
    if density >= 1:
        return delta
    kept = torch.where(bernoulli_mask(delta.shape, density, rng), delta, 0.0)
    return rescale_kept(delta, kept, rescale, density)


def rescale_kept(delta: Tensor, kept: Tensor, rule: Rescale, density: float) -> Tensor:
    if rule == "density":
        return kept / density
    if rule == "l1":
        before, after = delta.abs().sum(), kept.abs().sum()
        if before < 1e-7 or after < 1e-7:
            return kept
        return kept * (before / after)
    return kept


def stack_weighted(deltas: Sequence[Tensor], weights: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Stack δᵢ and wᵢ·δᵢ along a new leading axis; weights broadcast to the deltas' shape."""
    stacked = torch.stack(list(deltas))
    w = torch.tensor(list(weights), dtype=stacked.dtype).reshape(-1, *([1] * (stacked.dim() - 1)))
    return stacked, w


def elect_sign(votes: Tensor, method: Literal["sum", "count"]) -> Tensor:
    """Elected sign per element: +1 or −1, and +1 when the vote is tied at zero.

    ``sum``: the sign of Σ votesᵢ (the TIES paper's "total mass"); ``count``: the more frequent
    sign among the votes. Callers pass weighted deltas wᵢ·δᵢ (mergekit) or raw δᵢ (PEFT).
    """
    score = votes.sum(0) if method == "sum" else votes.sign().sum(0)
    return torch.where(score >= 0, 1.0, -1.0).to(votes.dtype)


def agreement_mask(votes: Tensor, sign: Tensor) -> Tensor:
    """True where a vote is non-zero and has the elected sign (zeros never agree)."""
    return votes.sign() == sign
