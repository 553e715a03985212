# mypy: disable-error-code="call-arg"
# (numba intrinsics are called without the typing context their definitions take)
"""The numba loops behind `_spherical_fast` (NuSLERP, Multi-SLERP, Karcher, NearSwap), imported
lazily as `_jit_loops` is.

Inputs are read in their stored dtype (bf16 bit patterns widened exactly, or float32); task
vectors are x − base in float32, as the torch kernels compute them; sums of products are
float64 (a product of two float32 values is exact in float64, so only the order of the
additions matters, and it is fixed: see `flat_sums` and `pair_sums`). No fast-math flags; as
in `_jit_loops`, loops index views from 0.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from merging.methods._jit_loops import _fma, _store, _value

LANES = 1024  # flat sums: element j of a chunk is added into lane j % LANES (also the block)
FLAT, LAST, FIRST = 0, 1, 2  # vector layouts (`_vectors.Layout.along`)

_jit = numba.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False)


@_jit
def _decode_vectors(base: Any, has_base: bool, xs: Any, start: int, count: int, out: Any) -> None:
    """out[m, :count] = float64(xs[m][start + j] − base[start + j]) (the difference in
    float32), or float64(xs[m][start + j]) without a base."""
    for m in range(len(xs)):
        x = xs[m][start : start + count]
        row = out[m]
        if has_base:
            b = base[start : start + count]
            for j in range(count):
                row[j] = np.float64(_value(x, j) - _value(b, j))
        else:
            for j in range(count):
                row[j] = np.float64(_value(x, j))


@_jit
def flat_sums(base: Any, has_base: bool, xs: Any, left: Any, right: Any, sums: Any) -> None:
    """sums[s] = Σ vₗ·vᵣ (float64) over the chunk, vₗ = v[left[s]], vᵣ = v[right[s]]: element j
    is added into lane j % LANES, in element order, then the lanes are added pairwise
    (l₀+l₁, l₂+l₃, …, halving: `fold`). Each lane is its own sum, so the loop over a block of
    LANES elements is elementwise (and vectorised) while the order of the additions is fixed."""
    n = xs[0].size
    values = np.empty((len(xs), LANES), dtype=np.float64)
    lanes = np.zeros((left.size, LANES), dtype=np.float64)
    for start in range(0, n, LANES):
        count = min(LANES, n - start)
        _decode_vectors(base, has_base, xs, start, count, values)
        for s in range(left.size):
            a, b, acc = values[left[s]], values[right[s]], lanes[s]
            for j in range(count):
                acc[j] += a[j] * b[j]
    for s in range(left.size):
        sums[s] = fold(lanes[s])


# Every pair of two or three inputs in one loop per block: the same lanes, the same order of
# additions, so the same sums as `flat_sums`. ``base`` is None without a base (numba compiles
# that case apart: no per-element test).
@_jit
def gram2(base: Any, x0: Any, x1: Any, sums: Any) -> None:
    """sums = (Σv₀v₀, Σv₀v₁, Σv₁v₁) over the chunk, as `flat_sums` adds them."""
    l00, l01, l11 = np.zeros(LANES), np.zeros(LANES), np.zeros(LANES)
    for start in range(0, x0.size, LANES):
        count = min(LANES, x0.size - start)
        a, b = x0[start : start + count], x1[start : start + count]
        if base is None:
            for j in range(count):
                u, v = np.float64(_value(a, j)), np.float64(_value(b, j))
                l00[j] += u * u
                l01[j] += u * v
                l11[j] += v * v
        else:
            bb = base[start : start + count]
            for j in range(count):
                q = _value(bb, j)
                u, v = np.float64(_value(a, j) - q), np.float64(_value(b, j) - q)
                l00[j] += u * u
                l01[j] += u * v
                l11[j] += v * v
    sums[0], sums[1], sums[2] = fold(l00), fold(l01), fold(l11)


@numba.njit(inline="always")
def _add_products3(u: Any, v: Any, w: Any, lanes: Any, j: int) -> None:
    lanes[0, j] += u * u
    lanes[1, j] += u * v
    lanes[2, j] += u * w
    lanes[3, j] += v * v
    lanes[4, j] += v * w
    lanes[5, j] += w * w


@_jit
def gram3(base: Any, x0: Any, x1: Any, x2: Any, sums: Any) -> None:
    """sums = (Σv₀v₀, Σv₀v₁, Σv₀v₂, Σv₁v₁, Σv₁v₂, Σv₂v₂) over the chunk, as `flat_sums`."""
    lanes = np.zeros((6, LANES))
    for start in range(0, x0.size, LANES):
        count = min(LANES, x0.size - start)
        a, b, c = x0[start : start + count], x1[start : start + count], x2[start : start + count]
        if base is None:
            for j in range(count):
                u, v, w = (
                    np.float64(_value(a, j)),
                    np.float64(_value(b, j)),
                    np.float64(_value(c, j)),
                )
                _add_products3(u, v, w, lanes, j)
        else:
            bb = base[start : start + count]
            for j in range(count):
                q = _value(bb, j)
                u, v = np.float64(_value(a, j) - q), np.float64(_value(b, j) - q)
                _add_products3(u, v, np.float64(_value(c, j) - q), lanes, j)
    for s in range(6):
        sums[s] = fold(lanes[s])


@_jit
def fold(lanes: Any) -> float:
    """Lane sums (a power of two of them) added pairwise: (l₀+l₁, l₂+l₃, …), halving until one
    is left; ``lanes`` is overwritten."""
    width = lanes.size
    while width > 1:
        width //= 2
        for i in range(width):
            lanes[i] = lanes[2 * i] + lanes[2 * i + 1]
    return float(lanes[0])


@_jit
def pair_sums(
    base: Any, has_base: bool, x0: Any, x1: Any, along: int, size: int, count: int,
    offset: int, first: int, sums: Any,
) -> None:  # fmt: skip
    """sums[:, vector − first] += (v₀², v₁², v₀·v₁) for each element of the chunk at ``offset``,
    in element order (as ``index_add_`` adds): vectors are rows of ``size`` elements (LAST) or
    the columns ``position % count`` (FIRST); ``sums``: float64 zeros (3, vectors)."""
    zero = np.float32(0.0)
    if along == LAST:
        row = offset // size
        left = (row + 1) * size - offset  # elements of this row left in the chunk
        q0 = q1 = q01 = 0.0
        for i in range(x0.size):
            if left == 0:
                sums[0, row - first], sums[1, row - first], sums[2, row - first] = q0, q1, q01
                row, left, q0, q1, q01 = row + 1, size, 0.0, 0.0, 0.0
            b = _value(base, i) if has_base else zero
            v0 = np.float64(_value(x0, i) - b)
            v1 = np.float64(_value(x1, i) - b)
            q0 += v0 * v0
            q1 += v1 * v1
            q01 += v0 * v1
            left -= 1
        sums[0, row - first], sums[1, row - first], sums[2, row - first] = q0, q1, q01
        return
    column = offset % count
    for i in range(x0.size):
        b = _value(base, i) if has_base else zero
        v0 = np.float64(_value(x0, i) - b)
        v1 = np.float64(_value(x1, i) - b)
        sums[0, column] += v0 * v0
        sums[1, column] += v1 * v1
        sums[2, column] += v0 * v1
        column = column + 1 if column + 1 < count else 0


@numba.njit(inline="always")
def _combined(base: Any, has_base: bool, xs: Any, cs: Any, i: int) -> Any:
    """v₀·c₀ then one fused multiply-add per further input (``mul`` then ``add_(v, alpha=c)``
    or ``addcmul_``), then + base: element ``i``, in float32."""
    b = _value(base, i) if has_base else np.float32(0.0)
    v = _value(xs[0], i) - b if has_base else _value(xs[0], i)
    value = v * cs[0]
    for m in range(1, len(xs)):
        v = _value(xs[m], i) - b if has_base else _value(xs[m], i)
        value = _fma(v, cs[m], value)
    return value + b if has_base else value


@_jit
def combine_flat(base: Any, has_base: bool, xs: Any, cs: Any, out: Any) -> None:
    """out = [base +] Σₘ cₘ·vₘ per element (cs: float32, one per input), vₘ = xₘ [− base];
    stored as ``out``'s dtype (bf16 or float32)."""
    for i in range(out.size):
        _store(out, i, _combined(base, has_base, xs, cs, i))


@_jit
def combine_rows(base: Any, has_base: bool, xs: Any, table: Any, size: int, offset: int,
                 out: Any) -> None:  # fmt: skip
    """`combine_flat` with each element's row's coefficients, table[row] (float32 (rows,
    inputs)), for the chunk at ``offset`` (rows of ``size`` elements)."""
    row = offset // size
    left = (row + 1) * size - offset  # elements of the row left in the chunk
    cs = table[row].copy()
    for i in range(out.size):
        if left == 0:
            row, left = row + 1, size
            for m in range(len(xs)):
                cs[m] = table[row, m]
        _store(out, i, _combined(base, has_base, xs, cs, i))
        left -= 1


@_jit
def combine_columns(base: Any, has_base: bool, xs: Any, table: Any, offset: int,
                    out: Any) -> None:  # fmt: skip
    """`combine_flat` with each element's column's coefficients, table[(offset + i) % columns]
    (float32 (columns, inputs))."""
    k = len(xs)
    count = table.shape[0]
    flat = table.ravel()
    column = offset % count
    for i in range(out.size):
        _store(out, i, _combined(base, has_base, xs, flat[column * k : column * k + k], i))
        column = column + 1 if column + 1 < count else 0


@_jit
def near_swap(a: Any, b: Any, t: Any, out: Any) -> None:
    """w·b + (1 − w)·a, w = clamp((1 / max(|a − b|, 1e-6))·t, 0, 1), elementwise: the torch
    expression's operations (``t / x`` is ``x.reciprocal() * t``), NaN propagated as clamp
    does."""
    floor = np.float32(1e-6)
    zero, one = np.float32(0.0), np.float32(1.0)
    for i in range(out.size):
        x = _value(a, i)
        y = _value(b, i)
        d = abs(x - y)
        d = floor if d < floor else d
        w = (one / d) * t
        w = zero if w <= zero else (one if w > one else w)  # (NaN stays NaN)
        _store(out, i, w * y + (one - w) * x)
