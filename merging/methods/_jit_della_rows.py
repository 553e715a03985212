# mypy: disable-error-code="misc, call-arg, var-annotated"
"""The fused numba loops of DELLA's compiled kernel (`_della_fused.FusedDella`), imported lazily.

`observe_rows` does a chunk's whole reduction step for one model in one call: the 16-bit
draws (PCG64DXSM per 65,536-element block, as `della.draws` gets them from NumPy; the
generator's lanes are `_jit_loops.PCG_LANES`), then per row |δ| = |x − base| from the stored
values (bf16 widened in registers), the ranked keep mask (`_jit_della.keep_row`) and the row's
L1 norms before and after it, in float64: the sums of four interleaved partial sums, which
are exact (and so any order's, here a vectorised integer sum's) wherever the keys are all
multiples of a unit small enough for the row's sum (`_unit`), as on every row of the bf16 1B
benchmark's task vectors. `linear_apply` is DELLA-linear's output pass, each
value rounded as the torch kernel rounds it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from merging.methods._jit_della import keep_row
from merging.methods._jit_loops import (
    RAWS_PER_BLOCK,
    _bits_to_float,
    _float_to_bits,
    _jit,
    _pcg_raws,
    _store,
)
from merging.methods._jit_loops import _value as value_at

FINITE = np.uint32(0x7F800000)  # keys from here on are infinities or NaNs: never summed exactly


@_jit
def _keys(x: Any, base: Any, keys: Any) -> Any:
    """keys ← bit patterns of |x − base|; returns (largest, smallest key). (Vectorised.)"""
    top, bottom = np.uint32(0), np.uint32(0xFFFFFFFF)
    for j in range(keys.size):
        k = _float_to_bits(abs(value_at(x, j) - value_at(base, j)))
        keys[j] = k
        top = max(top, k)
        bottom = min(bottom, k)
    return top, bottom


@_jit
def _unit(top: Any, n: int) -> Any:
    """2^E for the smallest E with n non-negative float32 values of at most ``top`` (a key)
    summing to below 2^(53 + E): multiples of 2^E, every partial sum of theirs is a float64
    exactly (never below 2⁻¹⁴⁹, the float32 values' own unit)."""
    length = 0
    while (1 << length) < n:
        length += 1
    exponent = max(-149, np.int64(top >> np.uint32(23)) - 126 + length - 53)
    return np.float64(2.0) ** exponent


@_jit
def _exact_sums(keys: Any, keep: Any, unit: Any) -> Any:
    """(whether every key is a multiple of ``unit``, Σ|δ|, Σ|δ| over the kept elements), in
    float64. Where every key is, both sums are exact, as every partial sum in any order: the
    same float64s as `_lane_sum`'s and `_kept_sum`'s, from vectorised integer sums of the keys
    in units (one pass after the mask, which the first sum does not need)."""
    scale = np.float64(1.0) / unit
    exact = True
    total, kept = np.int64(0), np.int64(0)
    for j in range(keys.size):
        units = np.float64(_bits_to_float(keys[j])) * scale
        whole = np.int64(units)
        exact &= np.float64(whole) == units
        total += whole
        kept += whole * np.int64(keep[j])
    return exact, np.float64(total) * unit, np.float64(kept) * unit


@_jit
def _lane_sum(keys: Any) -> Any:
    """Σ|δ| in float64, four interleaved partial sums (the order where a sum is not exact)."""
    a0, a1, a2, a3 = 0.0, 0.0, 0.0, 0.0
    n = keys.size
    for j in range(0, n - 3, 4):
        a0 += np.float64(_bits_to_float(keys[j]))
        a1 += np.float64(_bits_to_float(keys[j + 1]))
        a2 += np.float64(_bits_to_float(keys[j + 2]))
        a3 += np.float64(_bits_to_float(keys[j + 3]))
    for j in range(n - n % 4, n):
        a0 += np.float64(_bits_to_float(keys[j]))
    return (a0 + a1) + (a2 + a3)


@_jit
def _kept(keys: Any, keep: Any, j: int) -> Any:
    """|δ_j| in float64 where kept, else +0.0: the key times the keep bit (a branch on a coin
    flip would be mispredicted half the time), so the same float64 terms as a conditional."""
    return np.float64(_bits_to_float(np.uint32(keys[j] * np.uint32(keep[j]))))


@_jit
def _kept_sum(keys: Any, keep: Any) -> Any:
    """Σ|δ| over the kept elements of a row, in float64 (four interleaved partial sums; the
    dropped elements add +0.0, which leaves each partial sum unchanged)."""
    a0, a1, a2, a3 = 0.0, 0.0, 0.0, 0.0
    n = keys.size
    for j in range(0, n - 3, 4):
        a0 += _kept(keys, keep, j)
        a1 += _kept(keys, keep, j + 1)
        a2 += _kept(keys, keep, j + 2)
        a3 += _kept(keys, keep, j + 3)
    for j in range(n - n % 4, n):
        a0 += _kept(keys, keep, j)
    return (a0 + a1) + (a2 + a3)


@_jit
def observe_rows(
    base: Any, x: Any, cols: int, states: Any, incs: Any, draw_start: int, table: Any,
    keep: Any, raws: Any, keys: Any, work: Any,
) -> Any:  # fmt: skip
    """keep (bool, the rows' elements) ← DELLA's keep mask of consecutive whole rows of
    ``cols``; ``base``/``x`` hold those rows, the draws start at ``draw_start`` in the first
    of the blocks ``states``/``incs`` seed; ``work``: `_jit_della.scratch`'s arrays. Returns
    the L1 norms (before, after) in float64, summed row by row: each row's sums four
    interleaved partial sums (`_lane_sum`, `_kept_sum`), computed exactly and so faster
    where the row's keys allow (`_exact_sums`)."""
    for b in range(states.shape[0]):
        _pcg_raws(states[b], incs[b], raws[b * RAWS_PER_BLOCK : (b + 1) * RAWS_PER_BLOCK])
    draws = raws.view(np.uint16)[draw_start:]
    row_keys = keys[:cols]
    before, after = 0.0, 0.0
    for row in range(x.size // cols):
        lo = row * cols
        top, bottom = _keys(x[lo : lo + cols], base[lo : lo + cols], row_keys)
        row_keep = keep[lo : lo + cols]
        keep_row(row_keys, draws[lo : lo + cols], table, row_keep, top, bottom, work)
        exact, total, kept = (
            _exact_sums(row_keys, row_keep, _unit(top, cols)) if top < FINITE else
            (False, 0.0, 0.0)
        )  # fmt: skip
        if exact:
            before += total
            after += kept
        else:
            before += _lane_sum(row_keys)
            after += _kept_sum(row_keys, row_keep)
    return before, after


@_jit
def linear_apply(
    base: Any, xs: Any, keeps: Any, masked: Any, scales: Any, weights: Any, divisor: Any,
    divide: bool, lambda_: Any, out: Any,
) -> None:  # fmt: skip
    """out = (Σᵢ ((δᵢ·kᵢ)·cᵢ)·wᵢ [÷ d])·λ + base, per element in registers: kᵢ the keep mask
    (where ``masked[i]``), cᵢ the rescale; each product and sum rounded to float32 in the
    torch kernel's order (`mix_deltas` without consensus, then ``mul_(λ).add_(base)``)."""
    zero, one = np.float32(0.0), np.float32(1.0)
    for j in range(base.size):
        b = value_at(base, j)
        total = zero
        for m in range(len(xs)):
            s = value_at(xs[m], j) - b
            if masked[m]:
                s = (s * (one if keeps[m][j] else zero)) * scales[m]
            term = s * weights[m]
            total = term if m == 0 else total + term
        if divide:
            total = total / divisor
        _store(out, j, total * lambda_ + b)
