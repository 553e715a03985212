# mypy: disable-error-code="call-arg"
"""The numba loops behind the sampled trim threshold (`_select.SampledSelect`): count the |δ|
bit patterns at or above a few candidate values, and gather those inside one interval.

Like `_jit_loops` (whose element helpers they use), imported lazily by `_compiled`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from merging.methods._jit_consensus import trim_range
from merging.methods._jit_loops import BLOCK, _decode, _float_to_bits, _jit, _value

_ABS = np.uint32(0x7FFFFFFF)


@_jit
def _magnitude_bits(base_block: Any, x: Any, bits: Any) -> None:
    """bits = the int pattern of |x − base| (the float32 δ, sign bit cleared)."""
    for j in range(x.size):
        bits[j] = _float_to_bits(_value(x, j) - base_block[j]) & _ABS


@_jit
def _count_range(base: Any, x: Any, limits: Any, start: int, stop: int) -> Any:
    """#{j in [start, stop) : bits(|δ[j]|) ≥ limits[c]} for the four limits (< 2³¹), in one
    loop (int32 compares vectorise; unsigned indices, as `_jit_consensus.trim_range`)."""
    b0, b1, b2, b3 = limits[0], limits[1], limits[2], limits[3]
    t0, t1, t2, t3 = np.int32(0), np.int32(0), np.int32(0), np.int32(0)
    for i in range(stop - start):
        j = np.uint64(start) + np.uint64(i)
        value = np.int32(_float_to_bits(_value(x, j) - _value(base, j)) & _ABS)
        # (numba widens int32 + int32 to int64: the casts keep the lanes 32-bit, 2x faster)
        t0 = np.int32(t0 + np.int32(value >= b0))
        t1 = np.int32(t1 + np.int32(value >= b1))
        t2 = np.int32(t2 + np.int32(value >= b2))
        t3 = np.int32(t3 + np.int32(value >= b3))
    return t0, t1, t2, t3


@_jit
def _count_pair(base: Any, x: Any, c: Any, c1: Any, start: int, stop: int) -> Any:
    """`_count_range` for two limits: what the counting pass needs when each candidate is
    usually exact (bf16 task vectors), with half its compares."""
    t0, t1 = np.int32(0), np.int32(0)
    for i in range(stop - start):
        j = np.uint64(start) + np.uint64(i)
        value = np.int32(_float_to_bits(_value(x, j) - _value(base, j)) & _ABS)
        t0 = np.int32(t0 + np.int32(value >= c))
        t1 = np.int32(t1 + np.int32(value >= c1))
    return t0, t1


@_jit
def _add_counts(base: Any, xs: Any, active: Any, limits: Any, counts: Any, pair: bool,
                start: int, stop: int) -> None:  # fmt: skip
    """Count the active inputs over [start, stop): all four limits, or with ``pair`` only
    limits 1 and 2 (the candidate c and c + 1; columns 0 and 3 are left as they are)."""
    for m in range(len(xs)):
        if not active[m]:
            continue
        if pair:
            t1, t2 = _count_pair(base, xs[m], limits[m, 1], limits[m, 2], start, stop)
            counts[m, 1] += t1
            counts[m, 2] += t2
        else:
            t0, t1, t2, t3 = _count_range(base, xs[m], limits[m], start, stop)
            counts[m, 0] += t0
            counts[m, 1] += t1
            counts[m, 2] += t2
            counts[m, 3] += t3


@_jit
def bound_counts(base: Any, xs: Any, active: Any, bounds: Any, counts: Any, pair: bool) -> None:
    """counts[m, c] += #{j : bits(|δₘ[j]|) ≥ bounds[m, c]} for every active input m, four
    bounds (< 2³¹) per input (with ``pair``, the middle two only: `_add_counts`), a block at a
    time (int32 counts cannot overflow)."""
    limits = bounds.astype(np.int32)
    for start in range(0, base.size, BLOCK):
        stop = min(base.size, start + BLOCK)
        _add_counts(base, xs, active, limits, counts, pair, start, stop)


@_jit
def count_trim_apply(
    base: Any, xs: Any, active: Any, bounds: Any, counts: Any, pair: bool, thresholds: Any,
    weights: Any, divisor_weights: Any, normalize: bool, lambda_: Any, out: Any,
) -> None:  # fmt: skip
    """`bound_counts` and, block by block while the block is in cache, TIES's output with the
    given thresholds (`_jit_consensus.trim_range`): the counting pass and a speculative output
    pass in one read of the inputs."""
    limits = bounds.astype(np.int32)
    for start in range(0, base.size, BLOCK):
        stop = min(base.size, start + BLOCK)
        _add_counts(base, xs, active, limits, counts, pair, start, stop)
        trim_range(base, xs, thresholds, weights, divisor_weights, normalize, lambda_, out,
                   start, stop)  # fmt: skip


@_jit
def gather_between(base: Any, x: Any, low: int, high: int, out: Any) -> int:
    """Write the |δ| bit patterns in [low, high) to ``out`` (branch-free); return how many."""
    n = base.size
    base_block = np.empty(BLOCK, dtype=np.float32)
    bits = np.empty(BLOCK, dtype=np.uint32)
    # the patterns are < 2³¹ (high may be 2³²): one unsigned compare, value − lo (mod 2³²) <
    # width, tests lo ≤ value < high in 32 bits
    lo = max(np.int64(low), 0)
    width = np.uint32(max(np.int64(0), min(np.int64(high), np.int64(1 << 31)) - lo))
    lo32 = np.uint32(min(lo, np.int64(1 << 31)))
    k = np.uint32(0)  # (a uint32 position, faster than int64: chunks hold < 2³² elements)
    for start in range(0, n, BLOCK):
        count = min(BLOCK, n - start)
        _decode(base[start : start + count], base_block)
        _magnitude_bits(base_block, x[start : start + count], bits)
        for j in range(count):
            value = bits[j]
            out[k] = value
            k = np.uint32(k + np.uint32(np.uint32(value - lo32) < width))
    return np.int64(k)
