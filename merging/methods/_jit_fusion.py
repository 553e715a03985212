# mypy: disable-error-code="call-arg, var-annotated"
"""The numba loops behind Arcee Fusion's compiled passes (`arcee_fusion.ArceeFusionKernel`),
imported lazily (`_method_loops`).

Each loop walks a span of flat elements that starts ``column`` elements into a row of ``cols``;
``kl[r]`` is the KL of the span's r-th row. The importance |x − base|·KL_row is computed as the
torch path computes it (a float32 subtraction, its absolute value, one multiply), so its bits,
the quantiles and the output follow from the rows' KL as on the torch path.

The row KL (`row_kl`) computes `arcee_fusion.row_kl`'s value (the exact KL rounded once to
float32) by an algebra without cancellation, in float32 vectors with float64 sums; rows it
cannot bound take a float64 loop of the formula itself (see `row_kl`).
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from merging.methods._jit_loops import (
    BLOCK,
    _bits_to_float,
    _float_to_bits,
    _fma,
    _jit,
    _store,
    _value,
)

# sums in an order LLVM may choose (vectorised lanes): float64 sums of float32 terms
_jit_sum = numba.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False,
                      fastmath={"reassoc"})  # fmt: skip
_HIGH = np.uint32(16)
_BUCKET = np.uint32(0x7FFF)  # (a NaN's sign bit aside: the histograms have 2¹⁵ buckets)
F = np.float32
FLOOR = 1e-8  # `arcee_fusion.PROBABILITY_FLOOR`
_ABS = np.uint32(0x7FFFFFFF)
_INPUT_LIMIT = np.uint32(0x42800000)  # |base| ≤ 64: exp(base) neither overflows nor is subnormal
_CHANGE_LIMIT = np.uint32(0x3D000000)  # |expm1(x − base)| ≤ 1/32: the series below are exact
_KL_SCRATCH = 3  # float32 rows of scratch `row_kl` takes
_SHORT_ROW = 64  # shorter rows take the float64 loop (too few terms to average the rounding)


@intrinsic
def _wide(typingctx: Any) -> Any:
    """Let LLVM vectorise the calling function with 512-bit vectors where the CPU has them
    (its ``prefer-vector-width`` attribute; LLVM prefers 256 bits on AVX-512 CPUs). Kept
    beside `_numba_start`'s process-wide choice (``HUBMERGE_VECTOR_BITS``) on purpose: the
    `_jit_sum` loops add in the order of their vector lanes, so pinning their width keeps the
    KL's bits independent of that setting on AVX-512 CPUs (0.25B outputs cmp-identical with
    256 and 512)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')  # (not in _known)
        return context.get_dummy_value()

    return types.none(), codegen


@_jit
def _exp_and_change(base: Any, x: Any, e: Any, g: Any) -> None:
    """e = exp(base) (Cephes' expf: 2ᵏ·P(r), |r| ≤ ln2/2, ~1 ulp), g = expm1(x − base) (its
    Taylor series to the 5th power: exact for |x − base| ≤ 1/32), elementwise in float32."""
    _wide()
    for j in range(base.size):
        a = _value(base, j)
        d = _value(x, j) - a
        k = _fma(a, F(1.4426950408889634), F(12582912.0)) - F(12582912.0)  # round(a/ln2)
        r = _fma(k, F(2.12194440e-4), _fma(k, F(-0.693359375), a))  # a − k·ln2 in two parts
        y = _fma(_fma(_fma(F(1.9875691500e-4), r, F(1.3981999507e-3)), r, F(8.3334519073e-3)),
                 r, F(4.1665795894e-2))  # fmt: skip
        y = _fma(_fma(_fma(y, r, F(1.6666665459e-1)), r, F(5.0000001201e-1)), r * r, r)
        scale = _bits_to_float(np.uint32((np.int32(k) + np.int32(127)) << np.int32(23)))
        e[j] = (y + F(1.0)) * scale
        series = _fma(_fma(_fma(F(1.0 / 120), d, F(1.0 / 24)), d, F(1.0 / 6)), d, F(0.5))
        g[j] = _fma(series * d, d, d)


@_jit_sum
def _weights(base: Any, e: Any, g: Any) -> tuple[float, float, Any]:
    """(Σ e, Σ e·g) in float64, and the larger of max |base| / 64 and max |g| / (1/32) as a
    test (> 1 where the row must take the float64 loop; NaN compares larger)."""
    _wide()
    total, changes = 0.0, 0.0
    largest, largest_change = np.uint32(0), np.uint32(0)
    for j in range(base.size):
        total += np.float64(e[j])
        changes += np.float64(e[j]) * np.float64(g[j])
        largest = max(largest, _float_to_bits(_value(base, j)) & _ABS)
        largest_change = max(largest_change, _float_to_bits(g[j]) & _ABS)
    return total, changes, largest <= _INPUT_LIMIT and largest_change <= _CHANGE_LIMIT


@_jit_sum
def _divergence(e: Any, g: Any, mean: Any, scale: Any, floor: Any) -> float:
    """Σ e·t²·h·ψ(t·scale·h) in float64, t = g − mean, h = e / (e + floor), ψ(r) = ((1 + r)·
    ln(1 + r) − r)/r² by its series to r⁵ (exact to float32 for |r| ≤ 1/15)."""
    _wide()
    total = 0.0
    for j in range(e.size):
        t = g[j] - mean
        h = e[j] / (e[j] + floor)
        r = t * (scale * h)
        psi = _fma(_fma(_fma(F(-1.0 / 42), r, F(1.0 / 30)), r, F(-1.0 / 20)), r, F(1.0 / 12))
        psi = _fma(_fma(psi, r, F(-1.0 / 6)), r, F(0.5))
        total += np.float64(e[j] * t * t * h * psi)
    return total


@_jit
def _exact_kl(base: Any, x: Any) -> Any:
    """The formula itself in float64 (`arcee_fusion.row_kl`'s operations, one element at a
    time): rows with large values or changes, infinities or NaNs."""
    top_a, top_b = -math.inf, -math.inf
    for j in range(base.size):
        top_a = max(top_a, np.float64(_value(base, j)))
        top_b = max(top_b, np.float64(_value(x, j)))
    sum_a, sum_b = 0.0, 0.0
    for j in range(base.size):
        sum_a += math.exp(np.float64(_value(base, j)) - top_a)
        sum_b += math.exp(np.float64(_value(x, j)) - top_b)
    total = 0.0
    for j in range(base.size):
        q = math.exp(np.float64(_value(base, j)) - top_a) / sum_a + FLOOR
        p = math.exp(np.float64(_value(x, j)) - top_b) / sum_b + FLOOR
        total += p * math.log(p / q)
    if total != total or math.isinf(top_a) or math.isinf(top_b):
        return F(math.nan)
    return F(max(total, 0.0))


@_jit
def row_kl(base: Any, x: Any, scratch: Any) -> Any:
    """KL(softmax(x) + 1e-8 ‖ softmax(base) + 1e-8) of one row, rounded to float32 (within 2
    ulps of the exact value, mostly equal to it; ``scratch``: (`_KL_SCRATCH`, ≥ row) float32).

    With e = exp(base), q̃ = e/Σe, g = expm1(x − base), μ = Σ q̃·g (so that p̃ = q̃·(1 + g)/(1 + μ)
    sums to 1), q = q̃ + 1e-8 and r = p/q − 1 = (g − μ)/(1 + μ)·q̃/q:
    KL = Σ p·ln(p/q) = Σ q·((1 + r)·ln(1 + r) − r) (as Σ p = Σ q), a sum of non-negative
    terms, none of them cancelling: float32 terms suffice where the float32 softmaxes and
    their log-ratios (whose sum cancels to ~10⁻³ of its terms here) do not.
    """
    if base.size < _SHORT_ROW:
        return _exact_kl(base, x)
    e, g = scratch[0][: base.size], scratch[1][: base.size]
    _exp_and_change(base, x, e, g)
    total, changes, bounded = _weights(base, e, g)
    if not bounded:
        return _exact_kl(base, x)
    mean = changes / total
    scale = 1.0 / (1.0 + mean)
    divergence = _divergence(e, g, F(mean), F(scale), F(FLOOR * total))
    return F(divergence * (scale * scale) / total)


@_jit
def kl_gather(base: Any, x: Any, cols: int, kl: Any, ranges: Any, below: Any, out: Any,
              ends: Any) -> None:  # fmt: skip
    """For each row of ``cols`` elements of the span (whole rows): its KL into ``kl``, then,
    the row still in cache, `_gather_row` of its importances (as `gather_ranges`)."""
    scratch = np.empty((_KL_SCRATCH, cols), dtype=np.float32)
    bits = np.empty(BLOCK, dtype=np.uint32)
    for row in range(base.size // cols):
        b, o = base[row * cols : (row + 1) * cols], x[row * cols : (row + 1) * cols]
        kl[row] = row_kl(b, o, scratch)
        _gather_row(b, o, kl[row], ranges, below, bits, out, ends)


@_jit
def sample_counts(base: Any, x: Any, cols: int, rows: Any, counts: Any) -> None:
    """`high_counts` of the rows ``rows`` (indices) of the whole flat tensors, their KL
    computed as `kl_gather` does."""
    scratch = np.empty((_KL_SCRATCH, cols), dtype=np.float32)
    bits = np.empty(BLOCK, dtype=np.uint32)
    for row in rows:
        b, o = base[row * cols : (row + 1) * cols], x[row * cols : (row + 1) * cols]
        _count_row(b, o, row_kl(b, o, scratch), bits, counts)


@_jit
def _importance_bits(base: Any, x: Any, kl: Any, bits: Any) -> None:
    for j in range(base.size):
        bits[j] = _float_to_bits(abs(_value(x, j) - _value(base, j)) * kl)


GROUP = 16  # uint32 lanes of `_compress_ranges`' vectors (one AVX-512 register)


@intrinsic
def _compress_ranges(typingctx: Any, bits: Any, groups: Any, ranges: Any, below: Any,
                     out: Any, ends: Any) -> Any:  # fmt: skip
    """Over the first `GROUP`·``groups`` of ``bits``, for each range i < 3: below[i] +=
    #(bits < ranges[0][i]), and the bits inside it (ranges[0][i] ≤ bits ≤ ranges[1][i])
    written in order to ``out[i]`` from ``ends[i]`` on, ``ends[i]`` moved past them. One
    vector of `GROUP` per step and LLVM's ``masked.compressstore`` (AVX-512's vpcompressd; a
    scalar sequence on CPUs without it), where a plain loop stores every element and
    advances by a flag."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        i32, i64, index_type = ir.IntType(32), ir.IntType(64), args[1].type
        vector, mask = ir.VectorType(i32, GROUP), ir.VectorType(ir.IntType(1), GROUP)
        arrays = {n: context.make_array(signature.args[n])(context, builder, args[n])
                  for n in (0, 2, 3, 4, 5)}  # fmt: skip
        bits_at = builder.bitcast(arrays[0].data, vector.as_pointer())
        ranges_at, below_at, out_at, ends_at = (arrays[n].data for n in (2, 3, 4, 5))
        row_length = cgutils.unpack_tuple(builder, arrays[4].strides, 2)[0]  # (bytes)
        rows_at = [builder.bitcast(builder.gep(builder.bitcast(out_at, ir.IntType(8).as_pointer()),
                   [builder.mul(row_length, ir.Constant(row_length.type, n))]), i32.as_pointer())
                   for n in range(3)]  # fmt: skip
        zeros = ir.Constant(ir.VectorType(i32, GROUP), [0] * GROUP)

        def splat(value: Any) -> Any:
            first = builder.insert_element(ir.Constant(vector, ir.Undefined), value,
                                           ir.Constant(i32, 0))  # fmt: skip
            return builder.shuffle_vector(first, ir.Constant(vector, ir.Undefined), zeros)

        def at(pointer: Any, n: int) -> Any:
            return builder.gep(pointer, [ir.Constant(i64, n)])

        bounds = [splat(builder.load(at(ranges_at, n))) for n in range(6)]
        starts = [builder.load(at(ends_at, n)) for n in range(3)]
        signature_of_store = ir.FunctionType(ir.VoidType(), [vector, i32.as_pointer(), mask])
        name = f"llvm.masked.compressstore.v{GROUP}i32"
        store = cgutils.get_or_insert_function(builder.module, signature_of_store, name)
        popcount = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(GROUP)])

        def count(flags: Any) -> Any:
            return builder.zext(builder.call(popcount, [builder.bitcast(flags, ir.IntType(
                GROUP))]), i64)  # fmt: skip

        entry = builder.block
        loop, body, done = (builder.append_basic_block(name) for name in ("loop", "body", "done"))
        builder.branch(loop)
        builder.position_at_end(loop)
        index = builder.phi(index_type)
        index.add_incoming(ir.Constant(index_type, 0), entry)
        totals = [builder.phi(i64) for _ in range(3)]  # counts below each range
        positions = [builder.phi(i64) for _ in range(3)]  # each range's next store
        for total, position, start in zip(totals, positions, starts, strict=True):
            total.add_incoming(ir.Constant(i64, 0), entry)
            position.add_incoming(start, entry)
        builder.cbranch(builder.icmp_signed("<", index, args[1]), body, done)
        builder.position_at_end(body)
        value = builder.load(builder.gep(bits_at, [index]), align=4)
        for n, (total, position) in enumerate(zip(totals, positions, strict=True)):
            low, high = bounds[n], bounds[3 + n]
            total.add_incoming(builder.add(total, count(builder.icmp_unsigned("<", value, low))),
                               body)  # fmt: skip
            inside = builder.and_(builder.icmp_unsigned(">=", value, low),
                                  builder.icmp_unsigned("<=", value, high))  # fmt: skip
            builder.call(store, [value, builder.gep(rows_at[n], [position]), inside])
            position.add_incoming(builder.add(position, count(inside)), body)
        index.add_incoming(builder.add(index, ir.Constant(index_type, 1)), body)
        builder.branch(loop)
        builder.position_at_end(done)
        for n, (total, position) in enumerate(zip(totals, positions, strict=True)):
            builder.store(builder.add(builder.load(at(below_at, n)), total), at(below_at, n))
            builder.store(position, at(ends_at, n))
        return context.get_dummy_value()

    u32, i64 = types.uint32, types.int64
    ok = ((bits, u32, 1), (ranges, u32, 2), (below, i64, 1), (out, u32, 2), (ends, i64, 1))
    if not all(isinstance(a, types.Array) and a.layout == "C" and (a.dtype, a.ndim) == (d, k)
               for a, d, k in ok):  # fmt: skip
        return None  # (vector loads and compressed stores need contiguous elements)
    return types.void(bits, types.intp, ranges, below, out, ends), codegen


@_jit
def _gather_row(base: Any, x: Any, kl: Any, ranges: Any, below: Any, bits: Any, out: Any,
                ends: Any) -> None:  # fmt: skip
    """Per block: the importance bits (a loop that vectorises), then `_compress_ranges` of
    its whole groups and the same, a plain branch-free loop, of the rest."""
    lows, highs = ranges[0], ranges[1]
    for start in range(0, base.size, BLOCK):
        size = min(BLOCK, base.size - start)
        _importance_bits(base[start : start + size], x[start : start + size], kl, bits)
        groups = size // GROUP
        _compress_ranges(bits, groups, ranges, below, out, ends)
        for j in range(groups * GROUP, size):
            value = bits[j]
            for i in range(3):
                below[i] += np.int64(value < lows[i])
                out[i, ends[i]] = value
                ends[i] += np.int64((value >= lows[i]) & (value <= highs[i]))


@_jit
def gather_ranges(base: Any, x: Any, kl: Any, column: int, cols: int, ranges: Any, below: Any,
                  out: Any, ends: Any) -> None:  # fmt: skip
    """Write the importance bit patterns inside each range i to ``out[i]`` (`_gather_row`;
    rows at least one element longer than the span), from ``ends[i]`` on, moving ``ends``;
    count those below each range into ``below``."""
    n, start, row, col = base.size, 0, 0, column
    bits = np.empty(BLOCK, dtype=np.uint32)
    while start < n:
        stop = min(n, start + cols - col)
        _gather_row(base[start:stop], x[start:stop], kl[row], ranges, below, bits, out, ends)
        start, row, col = stop, row + 1, 0


@_jit
def _count_row(base: Any, x: Any, kl: Any, bits: Any, counts: Any) -> None:
    for first in range(0, base.size, BLOCK):
        size = min(BLOCK, base.size - first)
        _importance_bits(base[first : first + size], x[first : first + size], kl, bits)
        for j in range(size):
            counts[np.intp(bits[j] >> _HIGH)] += 1


@_jit
def high_counts(base: Any, x: Any, kl: Any, column: int, cols: int, counts: Any) -> None:
    """counts[h] += #(importance bits >> 16 == h) over the span."""
    n, start, row, col = base.size, 0, 0, column
    bits = np.empty(BLOCK, dtype=np.uint32)
    while start < n:
        stop = min(n, start + cols - col)
        _count_row(base[start:stop], x[start:stop], kl[row], bits, counts)
        start, row, col = stop, row + 1, 0


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
    counts = np.zeros(1 << 15, dtype=np.int64)
    ranges, below = np.zeros((2, 3), dtype=np.uint32), np.zeros(3, dtype=np.int64)

    def room() -> tuple[np.ndarray, np.ndarray]:
        """A gather's buffers (as `arcee_fusion._found`: every element in each range, and
        the one spare slot the branch-free stores write to) and their fresh ends."""
        return np.empty((3, 5), dtype=np.uint32), np.zeros(3, dtype=np.int64)

    for dtype in (np.uint16, np.float32):
        base, x = np.zeros(4, dtype=dtype), np.zeros(4, dtype=dtype)
        kl_gather(base, x, 2, kl, ranges, below, *room())
        sample_counts(base, x, 2, np.zeros(1, dtype=np.int64), counts)
        gather_ranges(base, x, kl, 0, 2, ranges, below, *room())
        high_counts(base, x, kl, 0, 2, counts)
        for out in (np.empty(4, dtype=np.uint16), np.empty(4, dtype=np.float32)):
            fuse(base, x, kl, 0, 2, np.float32(0.0), out)
