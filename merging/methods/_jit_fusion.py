# mypy: disable-error-code="call-arg, var-annotated"
"""The numba loops behind Arcee Fusion's compiled passes (`arcee_fusion.ArceeFusionKernel`),
imported lazily (`_method_loops`).

Each loop walks a span of flat elements that starts ``column`` elements into a row of ``cols``;
``kl[r]`` is the KL of the span's r-th row. The importance |x − base|·KL_row is computed as the
torch path computes it (a float32 subtraction, its absolute value, one multiply), so its bits,
the quantiles and the output are the torch path's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from merging.methods._jit_loops import BLOCK, _decode, _float_to_bits, _jit, _store, _value

_HIGH = np.uint32(16)
_BUCKET = np.uint32(0x7FFF)  # (a NaN's sign bit aside: the histograms have 2¹⁵ buckets)


@_jit
def _importance_bits(base: Any, x: Any, kl: Any, bits: Any) -> None:
    for j in range(base.size):
        bits[j] = _float_to_bits(abs(_value(x, j) - _value(base, j)) * kl)


@_jit
def _high_counts_row(base: Any, x: Any, kl: Any, even: Any, odd: Any, bits: Any) -> None:
    """Per block: the importance bits (vectorised), then the counts (2x faster than one loop)."""
    for start in range(0, base.size, BLOCK):
        size = min(BLOCK, base.size - start)
        _importance_bits(base[start : start + size], x[start : start + size], kl, bits)
        pairs = size // 2 * 2
        for j in range(0, pairs, 2):
            even[np.intp((bits[j] >> _HIGH) & _BUCKET)] += 1
            odd[np.intp((bits[j + 1] >> _HIGH) & _BUCKET)] += 1
        if pairs < size:  # (the last block's: BLOCK is even, so j's parity in the row)
            even[np.intp((bits[pairs] >> _HIGH) & _BUCKET)] += 1


@_jit
def high_counts(base: Any, x: Any, kl: Any, column: int, cols: int, counts: Any) -> None:
    """counts[h] += #(importance bits >> 16 == h), two interleaved sub-histograms (counts[0],
    counts[1]) so that consecutive equal buckets do not wait on each other's store."""
    n, start, row, col = base.size, 0, 0, column
    bits = np.empty(BLOCK, dtype=np.uint32)
    while start < n:
        stop = min(n, start + cols - col)
        _high_counts_row(base[start:stop], x[start:stop], kl[row], counts[0], counts[1], bits)
        start, row, col = stop, row + 1, 0


@_jit
def _gather_row(base: Any, x: Any, kl: Any, wanted: Any, bits: Any, out: Any) -> int:
    """Per block: the importance bits (a loop that vectorises), then a branch-free gather with
    a uint32 store position (the span has < 2³² elements; 2x faster than one int64 loop)."""
    k = np.uint32(0)
    for start in range(0, base.size, BLOCK):
        size = min(BLOCK, base.size - start)
        _importance_bits(base[start : start + size], x[start : start + size], kl, bits)
        for j in range(size):
            value = bits[j]
            out[k] = value
            k = np.uint32(k + np.uint32(wanted[np.intp((value >> _HIGH) & _BUCKET)]))
    return np.int64(k)


@_jit
def gather_buckets(base: Any, x: Any, kl: Any, column: int, cols: int, wanted: Any,
                   out: Any) -> int:  # fmt: skip
    """Write the importance bit patterns whose high half is marked in ``wanted`` (a byte per
    bucket) to ``out`` (at least one element longer than the span); return how many."""
    n, start, row, col, k = base.size, 0, 0, column, 0
    bits = np.empty(BLOCK, dtype=np.uint32)
    while start < n:
        stop = min(n, start + cols - col)
        k += _gather_row(base[start:stop], x[start:stop], kl[row], wanted, bits, out[k:])
        start, row, col = stop, row + 1, 0
    return k


@_jit
def _fuse_row(base: Any, x: Any, kl: Any, threshold: Any, out: Any) -> None:
    zero, one = np.float32(0.0), np.float32(1.0)
    for j in range(base.size):
        b = _value(base, j)
        delta = _value(x, j) - b
        keep = one if abs(delta) * kl >= threshold else zero
        _store(out, j, delta * keep + b)


@_jit
def fuse(base: Any, x: Any, kl: Any, column: int, cols: int, threshold: Any, out: Any) -> None:
    """out = base + (x − base)·[importance ≥ τ] (``(other − base).mul_(keep).add_(base)``)."""
    n, start, row, col = base.size, 0, 0, column
    while start < n:
        stop = min(n, start + cols - col)
        _fuse_row(base[start:stop], x[start:stop], kl[row], threshold, out[start:stop])
        start, row, col = stop, row + 1, 0


def warm_up() -> None:
    """Compile (or load) the loops for bf16 and float32 inputs and outputs."""
    kl = np.ones(4, dtype=np.float32)
    counts = np.zeros((2, 1 << 15), dtype=np.int64)
    _decode(np.zeros(4, dtype=np.uint16), np.empty(4, dtype=np.float32))  # bf16 chunks widened
    for dtype in (np.uint16, np.float32):
        base, x = np.zeros(4, dtype=dtype), np.zeros(4, dtype=dtype)
        high_counts(base, x, kl, 0, 2, counts)
        gather_buckets(base, x, kl, 0, 2, np.zeros(1 << 15, dtype=np.uint8),
                       np.empty(4, dtype=np.uint32))  # fmt: skip
        for out in (np.empty(4, dtype=np.uint16), np.empty(4, dtype=np.float32)):
            fuse(base, x, kl, 0, 2, np.float32(0.0), out)
