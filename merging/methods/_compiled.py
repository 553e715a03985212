"""Fused, compiled loops for the TIES / DARE family on CPU (numba), with the same results.

Each function does in one loop over a chunk what `_kernels.FamilyKernel` does in a sequence of
torch ops, each with its own temporaries: the task vectors δᵢ = xᵢ − base are computed from the
stored inputs (bf16 bit patterns widened in registers, or float32) and never written to
memory. Every value is rounded exactly as the torch ops round it (the same IEEE float32
operations in the same order, no fused multiply-adds, no reassociation), so outputs are
bit-identical to the torch kernels; tests/merging/test_compiled.py compares them bit for bit.

Where numba is missing (or ``HUBMERGE_NO_JIT=1``), or inputs are neither bf16 nor float32, or
the chunk is on an accelerator, `available` is false or `wants` declines, and the torch kernels
run instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

try:  # numba is optional: without it the torch kernels run
    if os.environ.get("HUBMERGE_NO_JIT"):
        raise ImportError("disabled by HUBMERGE_NO_JIT")
    import numba
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic, overload
except ImportError:  # pragma: no cover - exercised where numba is not installed
    numba = None

available = numba is not None
BLOCK = 1024  # elements per inner block: a few KB of scratch per model, in L1
HIGH_BUCKETS = 1 << 15
LOW_BUCKETS = 1 << 16
SIGN_METHODS = {"sum": 0, "count": 1, "total": 2}
# per-model sparsification modes
DENSE, TRIM, MASK = 0, 1, 2
# per-model rescale after a DARE mask
RESCALE_NONE, RESCALE_MUL, RESCALE_DIV = 0, 1, 2


def _as_array(x: Tensor) -> np.ndarray:
    """A CPU chunk as the array the loops read: bf16 as its uint16 bit patterns."""
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().view(np.uint16)
    return x.numpy()


def wants(base: Tensor, inputs: Sequence[Tensor], dtype: torch.dtype) -> bool:
    """Whether the compiled loops can take these chunks: CPU, float32 compute, and every
    input in one storage dtype (bf16 or float32; the base may differ)."""
    if not available or dtype != torch.float32 or base.device.type != "cpu":
        return False
    kinds = {x.dtype for x in inputs}
    return (
        len(kinds) == 1
        and kinds <= {torch.bfloat16, torch.float32}
        and base.dtype in (torch.bfloat16, torch.float32)
        and base.is_contiguous()
        and all(x.is_contiguous() for x in inputs)
    )


def histogram_buffer(step: int, models: int) -> np.ndarray:
    """Zeroed counts for `magnitude_histograms` in pass ``step``: two interleaved
    sub-histograms per input (added up at the end of the pass)."""
    return np.zeros((models, 2, HIGH_BUCKETS if step == 0 else LOW_BUCKETS), dtype=np.int64)


def magnitude_histograms(
    step: int,
    base: Tensor,
    inputs: Sequence[Tensor],
    active: Sequence[bool],
    highs: Sequence[int],
    counts: np.ndarray,
) -> None:
    """Add this chunk to radix-select histograms of the |δᵢ| bit patterns, one row per input:
    pass 0 counts the high 16 bits; pass 1 the low 16 bits of the elements whose high bits
    equal ``highs[i]`` (the bucket that holds the threshold). Inactive rows are untouched.
    ``counts`` (from `histogram_buffer`) must not be shared with a concurrent call."""
    xs = tuple(_as_array(x) for x in inputs)
    flags = np.asarray(active, dtype=np.uint8)
    if step == 0:
        _high_histograms(_as_array(base), xs, flags, counts)
    else:
        _low_histograms(_as_array(base), xs, flags, np.asarray(highs, dtype=np.int64), counts)


def magnitudes(base: Tensor, x: Tensor) -> Tensor:
    """|x − base| in float32 (what ``delta_of(x, base).abs_()`` gives), in one loop."""
    out = np.empty(x.numel(), dtype=np.float32)
    _magnitudes(_as_array(base), _as_array(x), out)
    return torch.from_numpy(out)


def family_apply(
    base: Tensor,
    inputs: Sequence[Tensor],
    *,
    modes: Sequence[int],
    thresholds: Sequence[float],
    keeps: Sequence[np.ndarray | None],
    rescales: Sequence[int],
    scales: Sequence[float],
    weights: Sequence[float],
    divisor_weights: Sequence[float],
    sign_method: str,
    normalize: bool,
    lambda_: float,
) -> Tensor:
    """The consensus merge of one chunk, base + λ·Σᵢ wᵢ·mᵢ·sᵢ (÷ Σ of the agreeing divisor
    weights with ``normalize``), where sᵢ is δᵢ trimmed at ``thresholds[i]`` (TRIM), masked by
    ``keeps[i]`` and rescaled (MASK), or δᵢ itself (DENSE); as `_ops.combine_deltas` does."""
    n = base.numel()
    empty = np.zeros(0, dtype=np.uint8)
    keep_arrays = tuple(empty if k is None else k.view(np.uint8) for k in keeps)
    out = np.empty(n, dtype=np.float32)
    _family_apply(
        _as_array(base),
        tuple(_as_array(x) for x in inputs),
        np.asarray(modes, dtype=np.int64),
        np.asarray(thresholds, dtype=np.float32),
        keep_arrays,
        np.asarray(rescales, dtype=np.int64),
        np.asarray(scales, dtype=np.float32),
        np.asarray(weights, dtype=np.float32),
        np.asarray(divisor_weights, dtype=np.float32),
        SIGN_METHODS[sign_method],
        normalize,
        np.float32(lambda_),
        out,
    )
    return torch.from_numpy(out)


if available:
    _jit = numba.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False)

    @intrinsic
    def _bits_to_float(typingctx: Any, bits: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.bitcast(args[0], ir.FloatType())

        return types.float32(types.uint32), codegen

    @intrinsic
    def _float_to_bits(typingctx: Any, value: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.bitcast(args[0], ir.IntType(32))

        return types.uint32(types.float32), codegen

    def _value(array, index):  # type: ignore[no-untyped-def]  # (numba matches signatures)
        """Element ``index`` as float32 (bf16 bit patterns are widened exactly)."""

    @overload(_value, inline="always")
    def _value_impl(array, index):  # type: ignore[no-untyped-def]
        if array.dtype == types.uint16:
            return lambda array, index: _bits_to_float(np.uint32(array[index]) << np.uint32(16))
        return lambda array, index: np.float32(array[index])

    # Loops index views from 0 (an index like ``start + j`` costs a wraparound check per
    # element and stops vectorisation).
    @_jit
    def _decode(source: Any, target: Any) -> None:
        for j in range(source.size):
            target[j] = _value(source, j)

    @_jit
    def _delta_block(base_block: Any, x: Any, target: Any) -> None:
        """target = x − base over one block (delta_of: the input widened, then subtracted)."""
        for j in range(x.size):
            target[j] = _value(x, j) - base_block[j]

    @_jit
    def _magnitudes(base: Any, x: Any, out: Any) -> None:
        for j in range(out.size):
            out[j] = abs(_value(x, j) - _value(base, j))

    # Histograms count into two interleaved sub-histograms: consecutive elements in one
    # bucket would otherwise wait on each other's store.
    @_jit
    def _high_histograms(base: Any, xs: Any, active: Any, counts: Any) -> None:
        n = base.size
        base_block = np.empty(BLOCK, dtype=np.float32)
        delta = np.empty(BLOCK, dtype=np.float32)
        mask = np.uint32(0x7FFFFFFF)
        for start in range(0, n, BLOCK):
            count = min(BLOCK, n - start)
            _decode(base[start : start + count], base_block)
            for m in range(len(xs)):
                if active[m]:
                    _delta_block(base_block, xs[m][start : start + count], delta)
                    even, odd = counts[m, 0], counts[m, 1]
                    pairs = count // 2 * 2
                    for j in range(0, pairs, 2):
                        even[np.intp((_float_to_bits(delta[j]) & mask) >> 16)] += 1
                        odd[np.intp((_float_to_bits(delta[j + 1]) & mask) >> 16)] += 1
                    if pairs < count:
                        even[np.intp((_float_to_bits(delta[pairs]) & mask) >> 16)] += 1

    @_jit
    def _low_histograms(base: Any, xs: Any, active: Any, highs: Any, counts: Any) -> None:
        n = base.size
        base_block = np.empty(BLOCK, dtype=np.float32)
        delta = np.empty(BLOCK, dtype=np.float32)
        mask = np.uint32(0x7FFFFFFF)
        low = np.uint32(0xFFFF)
        for start in range(0, n, BLOCK):
            count = min(BLOCK, n - start)
            _decode(base[start : start + count], base_block)
            for m in range(len(xs)):
                if active[m]:
                    _delta_block(base_block, xs[m][start : start + count], delta)
                    row = counts[m, 0]
                    high = np.uint32(highs[m])
                    for j in range(count):
                        bits = _float_to_bits(delta[j]) & mask
                        if (bits >> 16) == high:
                            row[np.intp(bits & low)] += 1

    @_jit
    def _sparsify_block(
        delta: Any, mode: int, threshold: Any, keep: Any, rescale: int, scale: Any, count: int
    ) -> None:
        """δ → s in place: keep_where(δ, |δ| ≥ t), or δ·mask then ·scale / ÷scale (DARE).
        A dropped element is δ·0 (a signed zero), as the torch multiply gives."""
        zero = np.float32(0.0)
        one = np.float32(1.0)
        if mode == TRIM:
            for j in range(count):
                delta[j] = delta[j] * (one if abs(delta[j]) >= threshold else zero)
        elif mode == MASK:
            for j in range(count):
                delta[j] = delta[j] * (one if keep[j] != 0 else zero)
            if rescale == RESCALE_MUL:
                for j in range(count):
                    delta[j] = delta[j] * scale
            elif rescale == RESCALE_DIV:
                for j in range(count):
                    delta[j] = delta[j] / scale

    @_jit
    def _family_apply(
        base: Any,
        xs: Any,
        modes: Any,
        thresholds: Any,
        keeps: Any,
        rescales: Any,
        scales: Any,
        weights: Any,
        divisor_weights: Any,
        sign_method: int,
        normalize: bool,
        lambda_: Any,
        out: Any,
    ) -> None:
        n = base.size
        models = len(xs)
        base_block = np.empty(BLOCK, dtype=np.float32)
        kept = np.empty((models, BLOCK), dtype=np.float32)  # sᵢ
        terms = np.empty((models, BLOCK), dtype=np.float32)  # wᵢ·sᵢ
        score = np.empty(BLOCK, dtype=np.float32)
        mixed = np.empty(BLOCK, dtype=np.float32)
        divisor = np.empty(BLOCK, dtype=np.float32)
        zero = np.float32(0.0)
        one = np.float32(1.0)
        for start in range(0, n, BLOCK):
            count = min(BLOCK, n - start)
            _decode(base[start : start + count], base_block)
            for m in range(models):
                s = kept[m]
                _delta_block(base_block, xs[m][start : start + count], s)
                keep = keeps[m][start : start + count] if modes[m] == MASK else keeps[m]
                _sparsify_block(s, modes[m], thresholds[m], keep, rescales[m], scales[m], count)
                t = terms[m]
                w = weights[m]
                for j in range(count):
                    t[j] = s[j] * w
            # the election: sum of wᵢsᵢ, of sign(wᵢsᵢ) (count), or of sᵢ (total), in order
            votes = kept if sign_method == 2 else terms
            for m in range(models):
                v = votes[m]
                if sign_method == 1:
                    for j in range(count):
                        value = one if v[j] > zero else (-one if v[j] < zero else zero)
                        score[j] = value if m == 0 else score[j] + value
                else:
                    for j in range(count):
                        score[j] = v[j] if m == 0 else score[j] + v[j]
            # an entry takes part when non-zero with the elected sign (+ on a tie); only
            # non-zero terms are added, so the sums equal the torch kernel's, signed zeros too
            for j in range(count):
                mixed[j] = zero
                divisor[j] = zero
            for m in range(models):
                v = votes[m]
                t = terms[m]
                dw = divisor_weights[m]
                for j in range(count):
                    agree = v[j] < zero if score[j] < zero else v[j] > zero
                    mixed[j] = mixed[j] + (t[j] if agree else zero)
                    divisor[j] = divisor[j] + (dw if agree else zero)
            dest = out[start : start + count]
            for j in range(count):
                value = mixed[j]
                if normalize:
                    value = value / (divisor[j] if divisor[j] != zero else one)
                dest[j] = value * lambda_ + base_block[j]
