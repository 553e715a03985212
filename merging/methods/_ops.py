"""Pure tensor helpers the merge methods are composed of.

Every function takes and returns tensors, never mutates its inputs, and draws randomness
only from the generator it is given.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

Rescale = Literal["none", "l1", "density"]


def as_float(mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """A boolean mask as 0/1 floats. Converted through its uint8 view: on CPU torch's bool → float
    path is not vectorised and is ~7x slower than uint8 → float."""
    return mask.view(torch.uint8).to(dtype)


def keep_where(values: Tensor, mask: Tensor) -> Tensor:
    """``values`` where ``mask`` is true, 0 elsewhere: a multiply by the 0/1 mask, which is several
    times faster than ``torch.where`` with a scalar on CPU (finite inputs: same values)."""
    return values * as_float(mask, values.dtype)


def delta_of(x: Tensor, base: Tensor) -> Tensor:
    """δ = x − base in ``base``'s dtype, as a new tensor. A low-precision ``x`` is converted first:
    on CPU that is faster than torch's mixed-dtype subtraction (same values)."""
    if x.dtype == base.dtype:
        return x - base
    return x.to(base.dtype).sub_(base)


def task_vectors(base: Tensor, inputs: Sequence[Tensor]) -> list[Tensor]:
    """δᵢ = θᵢ − θ_base for every input."""
    return [delta_of(x, base) for x in inputs]


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
    return keep_where(delta, delta.abs() >= threshold)


def crumb_counts(numel: int, density: float, gamma: float) -> tuple[int, int]:
    """Breadcrumbs' (k_keep, k_top): k_keep = ⌊density·n⌋ (at least 1) entries kept below the
    k_top = ⌊gamma·n⌋ largest, k_top cut down so that density is met."""
    keep = keep_count(numel, density)
    return keep, min(int(gamma * numel), numel - keep)


def prune_magnitude_outliers(delta: Tensor, density: float, gamma: float) -> Tensor:
    """Model Breadcrumbs: drop the ``gamma`` share of largest |δ| and the smallest ones.

    Keeps ranks [n − k_top − k_keep, n − k_top) of |δ| in ascending order, where
    k_keep = ⌊density·n⌋ and k_top = ⌊gamma·n⌋ (cut down so that density is met).
    """
    if density >= 1:
        return delta
    magnitudes = delta.abs().reshape(-1)
    n = magnitudes.numel()
    keep, top = crumb_counts(n, density, gamma)
    order = magnitudes.argsort(stable=True)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[n - top - keep : n - top]] = True
    return keep_where(delta, mask.reshape(delta.shape))


PARALLEL_THRESHOLD = 0.9995  # SLERP falls back to lerp above this |cos Ω|
BLOCK = 1 << 16  # random masks are drawn per block of this many elements


def keep_threshold(density: float) -> int:
    """DARE keeps an element when its 16-bit draw is below this: round(density·2¹⁶), at least 1.
    The keep probability is threshold/2¹⁶, i.e. density rounded to a multiple of 2⁻¹⁶."""
    return min(max(round(density * 2**16), 1), 2**16)


class RandomStream:
    """Deterministic randomness for one tensor, keyed by ``(seed, tensor name, source, block)``.

    Masks are drawn block by block over the flattened tensor, so a mask does not depend on
    how the tensor is split into chunks, on execution order, on threads or on the device. Each
    block of 65,536 elements has its own PCG64DXSM stream (NumPy's, seeded from a SHA-256 of the
    key); each 64-bit raw draw gives four 16-bit draws (in little-endian order), and an element
    is kept when its draw is below `keep_threshold(density)`. 16-bit draws halve the generator
    work of 32-bit ones; the keep probability is density to within 2⁻¹⁷.
    """

    def __init__(self, seed: int, tensor_name: str) -> None:
        self.seed = seed
        self.tensor_name = tensor_name

    def block_digest(self, source: int, block: int) -> bytes:
        """The 16 bytes of one block's seed: a SHA-256 of the key."""
        key = f"{self.seed}\x00{self.tensor_name}\x00{source}\x00{block}".encode()
        return hashlib.sha256(key).digest()[:16]

    def block_seed(self, source: int, block: int) -> int:
        """The 128-bit seed of one block's PCG64DXSM stream (its digest, little-endian)."""
        return int.from_bytes(self.block_digest(source, block), "little")

    def _draws(self, source: int, block: int) -> np.ndarray:
        raw = np.random.PCG64DXSM(self.block_seed(source, block)).random_raw(BLOCK // 4)
        return raw.astype("<u8", copy=False).view("<u2")

    def mask(self, source: int, offset: int, length: int, density: float) -> Tensor:
        """Flat boolean mask for elements [offset, offset + length): each kept w.p. density."""
        threshold = keep_threshold(density)
        parts = []
        position = offset
        end = offset + length
        while position < end:
            block, start = divmod(position, BLOCK)
            stop = min(BLOCK, start + end - position)
            parts.append(self._draws(source, block)[start:stop] < threshold)
            position += stop - start
        return torch.from_numpy(np.concatenate(parts) if len(parts) != 1 else parts[0])


def prune_random(
    delta: Tensor, density: float, rng: RandomStream, rescale: Rescale, *, source: int = 0
) -> Tensor:
    """DARE: drop each element with probability 1 − density, then rescale.

    Rescale rules: ``density`` divides the survivors by the density (the DARE paper, PEFT);
    ``l1`` scales the survivors so that the L1 norm of δ is unchanged (mergekit);
    ``none`` leaves them as they are.
    """
    if density >= 1:
        return delta
    keep = rng.mask(source, 0, delta.numel(), density).reshape(delta.shape).to(delta.device)
    kept = keep_where(delta, keep)
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


def elect_sign(votes: Sequence[Tensor] | Tensor, method: Literal["sum", "count"]) -> Tensor:
    """Elected sign per element: +1 or −1, and +1 when the vote is tied at zero.

    ``sum``: the sign of Σ votesᵢ (the TIES paper's "total mass"); ``count``: the more frequent
    sign among the votes. Callers pass weighted deltas wᵢ·δᵢ (mergekit) or raw δᵢ (PEFT).
    ``votes`` is a sequence of tensors, or one tensor stacked along dim 0.
    """
    terms = [v.sign() for v in votes] if method == "count" else list(votes)
    score = terms[0].clone()
    for term in terms[1:]:
        score.add_(term)
    # sign(sign(s) + ½) maps −1, 0, +1 to −1, +1, +1: float ops only (comparisons are slow on CPU)
    return score.sign_().add_(0.5).sign_()


def agreement(vote: Tensor, sign: Tensor) -> Tensor:
    """1.0 where a vote is non-zero and has the elected sign, else 0.0 (zeros never agree)."""
    return vote.sign().mul_(sign).clamp_(min=0)


def _zero_to_one(divisor: Tensor) -> Tensor:
    """``divisor`` with exact zeros replaced by 1 (adds 1 − |sign(d)|, which is 1 only at 0)."""
    return divisor.sign().abs_().neg_().add_(1).add_(divisor)


def mix_deltas(deltas: Sequence[Tensor], sources: Sequence[Any], params: Any, *,
               consensus: bool) -> Tensor:  # fmt: skip
    """`combine_deltas` with the sources' weights and the task-vector family's parameters
    (``normalize``, ``divide_by``, ``sign_method``: ``sum`` where a method has none)."""
    return combine_deltas(
        deltas,
        [s.weight for s in sources],
        consensus=consensus,
        normalize=params.normalize,
        divide_by=params.divide_by,
        sign_method=getattr(params, "sign_method", "sum"),
    )


def combine_deltas(
    deltas: Sequence[Tensor],
    weights: Sequence[float],
    *,
    consensus: bool,
    normalize: bool,
    divide_by: str = "weights",
    sign_method: str = "sum",
) -> Tensor:
    """Mix task vectors: Σᵢ wᵢ·δᵢ (masked to the elected sign with ``consensus``), ÷ divisor.

    Sign election (``consensus``): ``sum`` elects the sign of Σ wᵢ·δᵢ and ``count`` the majority
    sign of the wᵢ·δᵢ (mergekit); ``total`` the sign of Σ δᵢ, unweighted (PEFT). A tie elects +.
    An entry takes part only if it is non-zero and has the elected sign.
    Divisor (``normalize``): ``weights`` = Σ of the weights of the entries that take part
    (mergekit), ``count`` = how many take part (the TIES paper, PEFT); a zero divisor becomes 1.
    Sums run over the sources in order, so the values equal mergekit's for the same inputs.
    """
    weighted = [delta * weight for delta, weight in zip(deltas, weights, strict=True)]
    if not consensus:
        mixed = weighted[0].clone()
        for term in weighted[1:]:
            mixed.add_(term)
        total = float(sum(weights)) if divide_by == "weights" else float(len(deltas))
        return mixed / (1.0 if abs(total) < 1e-8 else total) if normalize else mixed
    votes = deltas if sign_method == "total" else weighted
    sign = elect_sign(votes, "count" if sign_method == "count" else "sum")
    mixed = torch.zeros_like(sign)
    divisor = torch.zeros_like(sign) if normalize else None
    for vote, term, weight in zip(votes, weighted, weights, strict=True):
        kept = agreement(vote, sign)
        mixed.addcmul_(term, kept)
        if divisor is not None:
            divisor.add_(kept, alpha=weight if divide_by == "weights" else 1.0)
    if divisor is None:
        return mixed
    return mixed.div_(_zero_to_one(divisor))
