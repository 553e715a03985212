"""Fused, compiled loops for the TIES / DARE family on CPU (numba), with the same results.

Each function does in one loop over a chunk what `_kernels.FamilyKernel` does in a sequence of
torch ops, each with its own temporaries: the task vectors δᵢ = xᵢ − base are computed from the
stored inputs (bf16 bit patterns widened in registers, or float32) and never written to
memory. Every value is rounded exactly as the torch ops round it (the same IEEE float32
operations in the same order, no fused multiply-adds, no reassociation), so outputs are
bit-identical to the torch kernels; tests/merging/test_compiled.py compares them bit for bit.

Where numba is missing (or ``HUBMERGE_NO_JIT=1``), or inputs are neither bf16 nor float32, or
the chunk is on an accelerator, `available` is false or `wants` declines, and the torch kernels
run instead. The loops (`_jit_loops` and three more, `LOOPS`) load in the loader thread
(`_loaders`) the first time a kernel asks for a kind of chunk (storage dtypes and number of
inputs): importing numba and loading the cached machine code (or compiling it, the first time
on a machine) takes a second or more. Kernels over large tensors wait for it; small ones go
through the torch kernels meanwhile, with the same results. Methods that never ask never
import numba.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from merging.methods import _spare
from merging.methods._loaders import Loops
from merging.methods._numba_start import AVAILABLE
from merging.methods._ops import BLOCK, keep_threshold
from merging.methods._streams import block_streams

logger = logging.getLogger(__name__)

available = AVAILABLE
HIGH_BUCKETS = 1 << 15
LOW_BUCKETS = 1 << 16
SIGN_METHODS = {"sum": 0, "count": 1, "total": 2}
# per-model sparsification modes
DENSE, TRIM, MASK = 0, 1, 2
# per-model rescale after a DARE mask
RESCALE_NONE, RESCALE_MUL, RESCALE_DIV = 0, 1, 2


def as_array(x: Tensor) -> np.ndarray:
    """A CPU chunk as the array the loops read: bf16 as its uint16 bit patterns."""
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().view(np.uint16)
    return x.numpy()


Kind = tuple[torch.dtype, torch.dtype, int]  # base dtype, inputs' dtype, number of inputs
_lock = threading.Lock()  # (the recycled histogram buffers below)
_loops: Any = None  # the `_jit_loops` module, once imported
_select_loops: Any = None  # `_jit_select`
_dare_loops: Any = None  # `_jit_dare`
_consensus_loops: Any = None  # `_jit_consensus`


STORED = (torch.bfloat16, torch.float32)  # the storage dtypes the loops read (and write)


def readable(base: Tensor | None, inputs: Sequence[Tensor], dtype: torch.dtype) -> bool:
    """Whether compiled loops can read these chunks at all: float32 compute, CPU, contiguous,
    every input in one storage dtype of `STORED` and the base (if any) in one too (it may
    differ from the inputs'). The loops of every method ask this."""
    kinds = {x.dtype for x in inputs}
    return (
        dtype == torch.float32
        and len(kinds) == 1
        and kinds <= set(STORED)
        and all(x.device.type == "cpu" and x.is_contiguous() for x in inputs)
        and (
            base is None
            or (base.device.type == "cpu" and base.dtype in STORED and base.is_contiguous())
        )
    )


def wants(
    base: Tensor, inputs: Sequence[Tensor], dtype: torch.dtype, *, wait: bool = False
) -> bool:
    """Whether the compiled loops take these chunks now: CPU, float32 compute, every input in
    one storage dtype (bf16 or float32; the base may differ), and the loops for this kind of
    chunk loaded. The first ask starts loading them in the background; with ``wait`` (large
    tensors) it waits for them, else it answers no until they are loaded. (Running torch
    kernels beside the loading thread would slow both: it holds the GIL most of the time.)"""
    if not available or not readable(base, inputs, dtype):
        return False
    return LOOPS.ready((base.dtype, inputs[0].dtype, len(inputs)), wait=wait)


def prepare(
    base_dtype: torch.dtype, input_dtype: torch.dtype, models: int, *, wait: bool = False
) -> None:
    """Load (or compile) the loops for one kind of chunk in the background thread; with
    ``wait``, block until they are ready."""
    LOOPS.ready((base_dtype, input_dtype, models), wait=wait)


def _loaded(kind: Kind, loops: Any, select: Any, dare: Any, consensus: Any) -> None:
    """(`LOOPS`' warm-up, in the loader thread.) The modules, then one run of each loop on a
    tiny chunk of this kind (which loads its machine code from numba's cache, or compiles it)."""
    global _loops, _select_loops, _dare_loops, _consensus_loops
    _loops, _select_loops, _dare_loops, _consensus_loops = loops, select, dare, consensus
    _warm_up(*kind)


LOOPS = Loops(
    [f"merging.methods.{name}" for name in ("_jit_loops", "_jit_select", "_jit_dare",
                                            "_jit_consensus")],
    _loaded, label="TIES / DARE / task arithmetic",
)  # fmt: skip


class _WarmUpStream:
    @staticmethod
    def block_seed(source: int, block: int) -> int:
        return 0

    @staticmethod
    def block_digest(source: int, block: int) -> bytes:
        return bytes(16)


def _warm_up(base_dtype: torch.dtype, input_dtype: torch.dtype, models: int) -> None:
    """Load (or compile) the loops a TIES, DARE-TIES or task-arithmetic merge into bf16 runs
    through. The rest — the radix fallback, DARE's draws without its L1 pass, the block loops
    for other sign rules, float32 outputs — compiles where it is first called (cached after)."""
    base = torch.zeros(4, dtype=base_dtype)
    inputs = [torch.zeros(4, dtype=input_dtype) for _ in range(models)]
    magnitudes(base, inputs[0])
    bounds = np.zeros((models, 4), dtype=np.int64)
    bound_counts(base, inputs, [True] * models, bounds, np.zeros(bounds.shape, dtype=np.int64))
    ones, counts = [1.0] * models, np.zeros(bounds.shape, dtype=np.int64)
    count_trim_apply(base, inputs, [True] * models, bounds, counts, thresholds=[0.0] * models,
                     weights=ones, divisor_weights=ones, normalize=True, lambda_=1.0,
                     out=torch.empty(4, dtype=torch.bfloat16))  # fmt: skip
    gather_between(base, inputs[0], 0, 1 << 31, 4)
    dare_observe(_WarmUpStream(), 0, 0, 0.5, base, inputs[0], torch.empty(4, dtype=torch.bool))
    out = torch.empty(4, dtype=torch.bfloat16)
    linear_apply(base, inputs, base_scale=1.0, alphas=[1.0] * models, divisor=None, out=out)
    together = [inputs[0], *inputs]  # `linear`: no base, one more input of the same dtype
    linear_apply(None, together, base_scale=1.0, alphas=[1.0] * (models + 1), divisor=2.0,
                 out=out)  # fmt: skip
    keep = np.ones(4, dtype=np.bool_)
    for mode in (TRIM, MASK):
        family_apply(base, inputs, modes=[mode] * models, thresholds=[0.0] * models,
                     keeps=[keep] * models, rescales=[RESCALE_NONE] * models,
                     scales=[1.0] * models, weights=[1.0] * models,
                     divisor_weights=[1.0] * models, sign_method="sum", normalize=True,
                     lambda_=1.0, out=out)  # fmt: skip


def keep_mask(rng: Any, source: int, offset: int, length: int, density: float) -> Tensor:
    """`RandomStream.mask` (the same draws, bit for bit) with the generator in compiled code:
    each block's stream starts where NumPy's seeding puts it, split into interleaved lanes."""
    states, incs = block_streams(rng, source, offset, length, _dare_loops.seed_streams)
    out = _spare.mask_buffer(length)
    start = offset - offset // BLOCK * BLOCK
    _loops.keep_mask(states, incs, start, keep_threshold(density), out.view(np.uint8))
    return torch.from_numpy(out)


_scratch = threading.local()  # per thread: float32 buffers for `dare_observe`


def _buffers(length: int) -> tuple[Tensor, Tensor]:
    held = getattr(_scratch, "buffers", None)
    if held is None or held[0].numel() < length:
        held = _scratch.buffers = (torch.empty(length), torch.empty(length))
    return held[0][:length], held[1][:length]


def dare_observe(
    rng: Any, source: int, offset: int, density: float, base: Tensor, x: Tensor, keep: Tensor
) -> tuple[Tensor, Tensor]:
    """DARE's reduction step for one run in one loop: the keep-mask (`keep_mask`'s) into
    ``keep`` (bool), and |δ| and the mask as 0/1 floats, returned as this thread's scratch
    views, valid until its next call."""
    length = x.numel()
    states, incs = block_streams(rng, source, offset, length, _dare_loops.seed_streams)
    magnitudes, kept = _buffers(length)
    start = offset - offset // BLOCK * BLOCK
    _dare_loops.dare_observe(states, incs, start, keep_threshold(density), as_array(base),
                             as_array(x), keep.numpy().view(np.uint8), magnitudes.numpy(),
                             kept.numpy())  # fmt: skip
    return magnitudes, kept


def masks_ready() -> bool:
    """Whether `keep_mask` runs compiled now (the loops loaded for any kind of chunk)."""
    return available and LOOPS.any_ready()


_free_buffers: dict[tuple[int, ...], list[np.ndarray]] = {}


def histogram_buffer(step: int, models: int) -> np.ndarray:
    """Zeroed counts for `magnitude_histograms` in pass ``step``, per input: two interleaved
    sub-histograms of the high bits, one of the low bits (summed over axis 1 at the end).
    Buffers are recycled (`release_buffer`): zeroing one is cheaper than faulting in a fresh
    megabyte for every tensor."""
    shape = (models, 2, HIGH_BUCKETS) if step == 0 else (models, 1, LOW_BUCKETS)
    with _lock:
        free = _free_buffers.get(shape)
        buffer = free.pop() if free else None
    if buffer is None:
        return np.zeros(shape, dtype=np.int64)
    buffer.fill(0)
    return buffer


def release_buffer(buffer: np.ndarray) -> None:
    with _lock:
        free = _free_buffers.setdefault(buffer.shape, [])
        if len(free) < 8:
            free.append(buffer)


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
    xs = tuple(as_array(x) for x in inputs)
    flags = np.asarray(active, dtype=np.uint8)
    if step == 0:
        _loops.high_histograms(as_array(base), xs, flags, counts)
    else:
        _loops.low_histograms(as_array(base), xs, flags, np.asarray(highs, dtype=np.int64), counts)


def bound_counts(
    base: Tensor, inputs: Sequence[Tensor], active: Sequence[bool], bounds: np.ndarray,
    counts: np.ndarray, *, pair: bool = False,
) -> None:  # fmt: skip
    """counts[i, c] += #(|δᵢ| bit patterns ≥ bounds[i, c]) over this chunk, active inputs only
    (with ``pair``, columns 1 and 2 only)."""
    flags = np.asarray(active, dtype=np.uint8)
    _select_loops.bound_counts(as_array(base), tuple(as_array(x) for x in inputs), flags,
                               bounds, counts, pair)  # fmt: skip


def count_trim_apply(
    base: Tensor, inputs: Sequence[Tensor], active: Sequence[bool], bounds: np.ndarray,
    counts: np.ndarray, *, pair: bool = False, thresholds: Sequence[float],
    weights: Sequence[float], divisor_weights: Sequence[float], normalize: bool,
    lambda_: float, out: Tensor,
) -> None:  # fmt: skip
    """`bound_counts` and TIES's output with the given trim thresholds (0 for a dense input;
    sum sign rule) into ``out`` (one of `OUTPUT_DTYPES`), in one read of the chunk."""
    flags = np.asarray(active, dtype=np.uint8)
    _select_loops.count_trim_apply(as_array(base), tuple(as_array(x) for x in inputs), flags,
                                   bounds, counts, pair, _scalars(thresholds), _scalars(weights),
                                   _scalars(divisor_weights), normalize, np.float32(lambda_),
                                   as_array(out))  # fmt: skip


def gather_between(base: Tensor, x: Tensor, low: int, high: int, expected: int) -> np.ndarray:
    """The |δ| bit patterns of this chunk in [low, high), in element order (``expected`` of
    them, counted before)."""
    out = np.empty(expected + 1, dtype=np.uint32)
    found = _select_loops.gather_between(as_array(base), as_array(x), low, high, out)
    assert found == expected, (found, expected)
    return out[:found]


def magnitudes(base: Tensor, x: Tensor) -> Tensor:
    """|x − base| in float32 (what ``delta_of(x, base).abs_()`` gives), in one loop."""
    out = np.empty(x.numel(), dtype=np.float32)
    _loops.magnitudes(as_array(base), as_array(x), out)
    return torch.from_numpy(out)


OUTPUT_DTYPES = STORED  # what `family_apply` writes itself


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
    out: Tensor | None = None,
) -> Tensor:
    """The consensus merge of one chunk, base + λ·Σᵢ wᵢ·mᵢ·sᵢ (÷ Σ of the agreeing divisor
    weights with ``normalize``), where sᵢ is δᵢ trimmed at ``thresholds[i]`` (TRIM), masked by
    ``keeps[i]`` and rescaled (MASK), or δᵢ itself (DENSE); as `_ops.combine_deltas` does.
    Into ``out`` when given (bf16 or float32, one of `OUTPUT_DTYPES`: values rounded as
    ``copy_`` rounds them), else into a new float32 tensor."""
    empty = np.zeros(0, dtype=np.uint8)
    keep_arrays = tuple(empty if k is None else k.view(np.uint8) for k in keeps)
    result = torch.empty(base.numel()) if out is None else out
    if sign_method == "sum" and _fast_apply(base, inputs, modes, thresholds, keep_arrays,
                                            rescales, scales, weights, divisor_weights,
                                            normalize, lambda_, result):  # fmt: skip
        return result
    _loops.family_apply(
        as_array(base),
        tuple(as_array(x) for x in inputs),
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
        as_array(result),
    )
    return result


def _fast_apply(
    base: Tensor, inputs: Sequence[Tensor], modes: Sequence[int], thresholds: Sequence[float],
    keeps: tuple[np.ndarray, ...], rescales: Sequence[int], scales: Sequence[float],
    weights: Sequence[float], divisor_weights: Sequence[float], normalize: bool,
    lambda_: float, out: Tensor,
) -> bool:  # fmt: skip
    """The per-element loops for the usual cases (every sᵢ trimmed or dense; or every sᵢ
    masked, scaled by a multiply or not at all); False for anything else."""
    xs = tuple(as_array(x) for x in inputs)
    common = (_scalars(weights), _scalars(divisor_weights), normalize, np.float32(lambda_))
    if all(m in (DENSE, TRIM) for m in modes):
        limits = [t if m == TRIM else 0.0 for m, t in zip(modes, thresholds, strict=True)]
        loop = _consensus_loops.trim_apply
        loop(as_array(base), xs, _scalars(limits), *common, as_array(out))
        return True
    if all(m == MASK for m in modes) and all(r != RESCALE_DIV for r in rescales):
        factors = [c if r == RESCALE_MUL else 1.0 for r, c in zip(rescales, scales, strict=True)]
        loop = _consensus_loops.mask_apply
        loop(as_array(base), xs, keeps, _scalars(factors), *common, as_array(out))
        return True
    return False


def _scalars(values: Sequence[float]) -> tuple[np.float32, ...]:
    """Per-model scalars for the per-element loops: a tuple of float32 (numba keeps them in
    registers; Python floats would make the arithmetic float64)."""
    return tuple(np.float32(v) for v in values)


def linear_apply(
    base: Tensor | None, inputs: Sequence[Tensor], *, base_scale: float, alphas: Sequence[float],
    divisor: float | None, out: Tensor,
) -> None:  # fmt: skip
    """out = (base·c + Σᵢ aᵢ·xᵢ) [÷ d], each aᵢ·xᵢ a fused multiply-add into the running sum
    (as ``add_(x, alpha=aᵢ)``), the scalars rounded to float32 as torch rounds them."""
    xs = tuple(as_array(x) for x in inputs)
    reference = xs[0] if base is None else as_array(base)
    _consensus_loops.linear_apply(reference, base is not None, xs, np.float32(base_scale),
                        _scalars(alphas), np.float32(divisor or 1.0),
                        divisor is not None, as_array(out))  # fmt: skip
