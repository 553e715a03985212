"""The factor algebra of combining LoRA adapters: pure functions on (A, B̃) pairs.

For adapter i, ΔW_i = B̃_i·A_i with A_i (r_i, in) and B̃_i = s_i·B_i (out, r_i), the scale
folded in. `merging.lora.combine` applies these per module and writes the adapter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from merging.errors import AdapterError

Factors = tuple[torch.Tensor, torch.Tensor]  # (A, B̃): ΔW = B̃·A in the adapter's orientation


def lorahub_factors(factors: Sequence[Factors | None], weights: Sequence[float]) -> Factors:
    """A' = Σ w_i·A_i, B' = Σ w_i·B̃_i (same rank required; absent modules count as zero)."""
    present = [f for f in factors if f is not None]
    ranks = {f[0].shape[0] for f in present}
    if len(ranks) > 1:
        raise AdapterError(f"lorahub needs equal ranks per module, got {sorted(ranks)}")
    a = torch.zeros_like(present[0][0])
    b = torch.zeros_like(present[0][1])
    for weight, pair in zip(weights, factors, strict=True):
        if pair is not None:
            a.add_(pair[0], alpha=weight)
            b.add_(pair[1], alpha=weight)
    return a, b


def concat_factors(factors: Sequence[Factors | None], weights: Sequence[float]) -> Factors:
    """A' = [A_1; …; A_n], B' = [w_1·B̃_1, …, w_n·B̃_n], so B'·A' = Σ w_i·B̃_i·A_i exactly."""
    pairs = [(w, f) for w, f in zip(weights, factors, strict=True) if f is not None]
    return torch.cat([f[0] for _, f in pairs]), torch.cat([w * f[1] for w, f in pairs], dim=1)


def svd_factors(delta: torch.Tensor, rank: int) -> tuple[Factors, float]:
    """Best rank-k factors of ΔW (B = U_k·√S_k, A = √S_k·V_kᵀ) and ‖ΔW − B·A‖_F."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    a, b = root[:, None] * vh[:k], u[:, :k] * root[None, :]
    return (a, b), float(s[k:].square().sum().sqrt())
