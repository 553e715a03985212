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
from llvmlite import ir
from numba import types
from numba.extending import overload

from merging.methods._jit_loops import _fma, _store, _value, fused_multiply_add

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


# Every pair of two or three inputs in one loop: the same lanes, the same order of additions,
# so the same sums as `flat_sums`. ``base`` is None without a base (numba compiles that case
# apart: no per-element test). The loops take a chunk of several parts (``part`` elements, a
# multiple of LANES) and fold each part's lanes apart, as if each were a chunk of its own.
# Within a part, PANEL rows of LANES elements at a time: lane j keeps its running sums in
# registers over the panel's rows (in row order, so in element order), PANEL times fewer loads
# and stores of the lanes. The products of two float32 values are exact in float64, so
# lane + u·v rounds once either way: a fused multiply-add gives the same sums.
PANEL = 4


# a·b + c in float64, rounded once (exactly a·b + c where a·b is exact)
_fma64 = fused_multiply_add(types.float64, ir.DoubleType())


@numba.njit(inline="always")
def _widened(x: Any, base: Any, i: int) -> Any:
    """v = x[i] [− base[i]] in float32, as float64 (``base`` None: no base)."""
    if base is None:
        return np.float64(_value(x, i))
    return np.float64(_value(x, i) - _value(base, i))


def _piece(base, start, stop):  # type: ignore[no-untyped-def]  # (numba matches signatures)
    """base[start:stop], or None without a base."""


@overload(_piece, inline="always")
def _piece_impl(base, start, stop):  # type: ignore[no-untyped-def]
    if base is None or isinstance(base, types.NoneType):
        return lambda base, start, stop: None
    return lambda base, start, stop: base[start:stop]


@_jit
def _gram2_part(base: Any, a: Any, b: Any, lanes: Any) -> None:
    """lanes[(v₀v₀, v₀v₁, v₁v₁), j] += the part's products, element j into lane j % LANES."""
    n = a.size
    l00, l01, l11 = lanes[0], lanes[1], lanes[2]
    rows = n // LANES // PANEL * PANEL
    for start in range(0, rows * LANES, PANEL * LANES):
        for j in range(LANES):
            q00, q01, q11 = l00[j], l01[j], l11[j]
            for r in range(PANEL):
                i = start + r * LANES + j
                u, v = _widened(a, base, i), _widened(b, base, i)
                q00, q01, q11 = _fma64(u, u, q00), _fma64(u, v, q01), _fma64(v, v, q11)
            l00[j], l01[j], l11[j] = q00, q01, q11
    for start in range(rows * LANES, n, LANES):
        for j in range(min(LANES, n - start)):
            u, v = _widened(a, base, start + j), _widened(b, base, start + j)
            l00[j], l01[j] = _fma64(u, u, l00[j]), _fma64(u, v, l01[j])
            l11[j] = _fma64(v, v, l11[j])


@_jit
def _gram3_part(base: Any, a: Any, b: Any, c: Any, lanes: Any) -> None:
    """lanes[(v₀v₀, v₀v₁, v₀v₂, v₁v₁, v₁v₂, v₂v₂), j] += the part's products (as
    `_gram2_part`)."""
    n = a.size
    l0, l1, l2, l3, l4, l5 = lanes[0], lanes[1], lanes[2], lanes[3], lanes[4], lanes[5]
    rows = n // LANES // PANEL * PANEL
    for start in range(0, rows * LANES, PANEL * LANES):
        for j in range(LANES):
            q0, q1, q2, q3, q4, q5 = l0[j], l1[j], l2[j], l3[j], l4[j], l5[j]
            for r in range(PANEL):
                i = start + r * LANES + j
                u, v, w = _widened(a, base, i), _widened(b, base, i), _widened(c, base, i)
                q0, q1, q2 = _fma64(u, u, q0), _fma64(u, v, q1), _fma64(u, w, q2)
                q3, q4, q5 = _fma64(v, v, q3), _fma64(v, w, q4), _fma64(w, w, q5)
            l0[j], l1[j], l2[j], l3[j], l4[j], l5[j] = q0, q1, q2, q3, q4, q5
    for start in range(rows * LANES, n, LANES):
        for j in range(min(LANES, n - start)):
            i = start + j
            u, v, w = _widened(a, base, i), _widened(b, base, i), _widened(c, base, i)
            l0[j], l1[j], l2[j] = _fma64(u, u, l0[j]), _fma64(u, v, l1[j]), _fma64(u, w, l2[j])
            l3[j], l4[j], l5[j] = _fma64(v, v, l3[j]), _fma64(v, w, l4[j]), _fma64(w, w, l5[j])


@_jit
def gram2(base: Any, x0: Any, x1: Any, part: int, sums: Any) -> None:
    """sums[p] = (Σv₀v₀, Σv₀v₁, Σv₁v₁) over part p (elements [p·part, (p + 1)·part)) of the
    chunk, as `flat_sums` adds them."""
    lanes = np.zeros((3, LANES))
    for p, start in enumerate(range(0, x0.size, part)):
        stop = min(x0.size, start + part)
        b = _piece(base, start, stop)
        _gram2_part(b, x0[start:stop], x1[start:stop], lanes)
        for s in range(3):
            sums[p, s] = fold(lanes[s])
        lanes[:] = 0.0


@_jit
def gram3(base: Any, x0: Any, x1: Any, x2: Any, part: int, sums: Any) -> None:
    """sums[p] = (Σv₀v₀, Σv₀v₁, Σv₀v₂, Σv₁v₁, Σv₁v₂, Σv₂v₂) over part p of the chunk, as
    `flat_sums` adds them."""
    lanes = np.zeros((6, LANES))
    for p, start in enumerate(range(0, x0.size, part)):
        stop = min(x0.size, start + part)
        b = _piece(base, start, stop)
        _gram3_part(b, x0[start:stop], x1[start:stop], x2[start:stop], lanes)
        for s in range(6):
            sums[p, s] = fold(lanes[s])
        lanes[:] = 0.0


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
