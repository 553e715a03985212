# mypy: disable-error-code="call-arg"
"""The per-element loops of the usual merges behind `_compiled`: TIES and DARE-TIES (sum sign
rule; `trim_apply`, `mask_apply`, and `trim_range` for TIES's counting pass), task arithmetic
and linear (`linear_apply`). One element at a time with every value in registers, rounded
exactly as the torch kernels round it (`_jit_loops`' element helpers). Imported lazily, as
`_jit_loops`.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from merging.methods._jit_loops import _fma, _jit, _store, _value


# The usual consensus merges, one element at a time with every value in registers: TIES
# (each sᵢ trimmed, or dense: a threshold of 0 keeps every finite δ as it is) and DARE-TIES
# (each sᵢ masked, then scaled), the sign elected by the sum of wᵢsᵢ. The per-model scalars
# come as tuples of float32 (values, not arrays the loop would reload), and each term wᵢsᵢ is
# computed twice (for the vote, then for the sum) rather than kept in a per-element array:
# with a scratch array the loop ran at ~35 ns per element from three inputs on (~0.7-1.2 ns
# now). The same values as `family_apply` (tests/merging/test_compiled.py). TIES and
# DARE-TIES keep separate loops on purpose: one loop with a mode flag and a tuple of unused
# masks for TIES ran at 29 ns per element from two inputs on.
@numba.njit(inline="always")
def _trimmed(x: Any, j: int, b: Any, threshold: Any, weight: Any) -> Any:
    """wᵢ·sᵢ for TIES: δ kept where |δ| ≥ t (a dropped element is δ·0, a signed zero)."""
    s = _value(x, j) - b
    return (s * (np.float32(1.0) if abs(s) >= threshold else np.float32(0.0))) * weight


@numba.njit(inline="always")
def _masked(keep: Any, x: Any, j: int, b: Any, scale: Any, weight: Any) -> Any:
    """wᵢ·sᵢ for DARE-TIES: δ masked (δ·0 where dropped), then ·scale."""
    s = (_value(x, j) - b) * (np.float32(1.0) if keep[j] != 0 else np.float32(0.0))
    return (s * scale) * weight


@numba.njit(inline="always")
def _agreeing(t: Any, negative: bool, mixed: Any, divisor: Any, dw: Any) -> Any:
    """Add a term to the consensus sum (and its divisor weight) when it is non-zero with the
    elected sign (+ on a tie): only such terms are added, so signed zeros match torch's."""
    zero = np.float32(0.0)
    agree = t < zero if negative else t > zero
    return mixed + (t if agree else zero), divisor + (dw if agree else zero)


@numba.njit(inline="always")
def _consensus_out(mixed: Any, divisor: Any, normalize: bool, lambda_: Any, b: Any) -> Any:
    one = np.float32(1.0)
    if normalize:
        mixed = mixed / (divisor if divisor != np.float32(0.0) else one)
    return mixed * lambda_ + b


@_jit
def trim_range(
    base: Any, xs: Any, thresholds: Any, weights: Any, divisor_weights: Any, normalize: bool,
    lambda_: Any, out: Any, start: int, stop: int,
) -> None:  # fmt: skip
    """TIES over elements [start, stop): ``thresholds``, ``weights``, ``divisor_weights`` are
    tuples of float32, one each. (Unsigned indices: a signed ``start + i`` costs a
    wraparound check per element and stops vectorisation.)"""
    zero = np.float32(0.0)
    for i in range(stop - start):
        j = np.uint64(start) + np.uint64(i)
        b = _value(base, j)
        score = zero
        for m in range(len(xs)):
            score = score + _trimmed(xs[m], j, b, thresholds[m], weights[m])
        negative = score < zero
        mixed, divisor = zero, zero
        for m in range(len(xs)):
            t = _trimmed(xs[m], j, b, thresholds[m], weights[m])
            mixed, divisor = _agreeing(t, negative, mixed, divisor, divisor_weights[m])
        _store(out, j, _consensus_out(mixed, divisor, normalize, lambda_, b))


@_jit
def trim_apply(
    base: Any, xs: Any, thresholds: Any, weights: Any, divisor_weights: Any, normalize: bool,
    lambda_: Any, out: Any,
) -> None:  # fmt: skip
    """TIES over a whole chunk (`trim_range`)."""
    trim_range(base, xs, thresholds, weights, divisor_weights, normalize, lambda_, out, 0,
               base.size)  # fmt: skip


@_jit
def mask_apply(
    base: Any, xs: Any, keeps: Any, scales: Any, weights: Any, divisor_weights: Any,
    normalize: bool, lambda_: Any, out: Any,
) -> None:  # fmt: skip
    """DARE-TIES: ``keeps`` the masks (uint8), the scalars tuples of float32, one each."""
    zero = np.float32(0.0)
    for j in range(base.size):
        b = _value(base, j)
        score = zero
        for m in range(len(xs)):
            score = score + _masked(keeps[m], xs[m], j, b, scales[m], weights[m])
        negative = score < zero
        mixed, divisor = zero, zero
        for m in range(len(xs)):
            t = _masked(keeps[m], xs[m], j, b, scales[m], weights[m])
            mixed, divisor = _agreeing(t, negative, mixed, divisor, divisor_weights[m])
        _store(out, j, _consensus_out(mixed, divisor, normalize, lambda_, b))


# Task arithmetic and linear as the torch kernels compute them: (θ_base·c) then one fused
# multiply-add per input (``add_(x, alpha=aᵢ)``), ÷ d for linear; per element, in registers.
@_jit
def linear_apply(
    base: Any, has_base: bool, xs: Any, base_scale: Any, alphas: Any, divisor: Any,
    divide: bool, out: Any,
) -> None:  # fmt: skip
    zero = np.float32(0.0)
    for j in range(out.size):
        value = np.float32(_value(base, j) * base_scale) if has_base else zero
        for m in range(len(xs)):
            value = _fma(np.float32(_value(xs[m], j)), alphas[m], np.float32(value))
        if divide:
            value = np.float32(value / divisor)
        _store(out, j, value)
