"""SCE (FuseChat, arXiv 2408.07990): Select, Calculate, Erase — as mergekit 0.1.5's ``sce``.

With task vectors δᵢ = θᵢ − θ_base (k models):

1. **Select** (``select_topk`` < 1): keep the elements whose variance across the models,
   Var = (1/k)·Σᵢ (δᵢ − δ̄)², is among the ``select_topk`` share of the non-zero variances
   (k_sel = ⌊select_topk·#(Var ≠ 0)⌋; none when k_sel = 0); zero the others in every δᵢ.
2. **Calculate**: wᵢ = mean(δᵢ²) / Σⱼ mean(δⱼ²) over the tensor (1/k each when Σ < 1e-6).
3. **Erase**: elect the sign of Σᵢ δᵢ per element (+ at 0) and drop the entries of the other
   sign (and zeros): θ = θ_base + Σᵢ wᵢ·mᵢ·δᵢ / max(Σᵢ wᵢ·mᵢ, 1e-6).

Ties rule of the selection: every element whose variance equals the k_sel-th largest is kept
(mergekit's ``topk`` keeps exactly k_sel, an arbitrary subset of the ties), so the result never
depends on element order. The kernel finds that threshold exactly by radix select over chunks,
computing the variance once per element (again only for the few elements of the threshold's
high bucket). On CPU with numba (bf16 or float32 inputs) compiled loops run instead
(`_FastSelect`): the same threshold, from a sample verified by a counting pass, usually two
passes over the inputs in all; their float64 sums of δᵢ² are added in another order (eight
lanes per 256K-element run), which can change a sum by float64 rounding (~1e-16 relative) and
so, very rarely, a weight's float32 rounding.
Per-model weights are not used (as in mergekit).
"""

from __future__ import annotations

import functools
import math
import threading
import weakref
from collections.abc import Sequence

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from merging.methods import _method_loops
from merging.methods._base import MethodParams, SourceParams, register
from merging.methods._bit_select import (
    HIGH_BUCKETS,
    LOW_BUCKETS,
    high_half,
    kth_from_top,
    low_half,
)
from merging.methods._kernels import ELEMENTWISE_CHUNK, SUM_PART, Kernel
from merging.methods._method_loops import as_array
from merging.methods._ops import RandomStream, agreement, as_float, elect_sign, task_vectors
from merging.methods._select import SampledSelect

WEIGHT_FLOOR = 1e-6


class SceParams(MethodParams):
    select_topk: float = Field(1.0, ge=0)
    int8_mask: bool = False  # accepted for mergekit recipes; hubmerge always masks exactly


def variance(deltas: Sequence[Tensor]) -> Tensor:
    """Population variance across the models, elementwise: (1/k)·Σᵢ (δᵢ − δ̄)²."""
    mean = deltas[0].clone()
    for d in deltas[1:]:
        mean.add_(d)
    mean.div_(len(deltas))
    out = torch.zeros_like(mean)
    for d in deltas:
        out.add_((d - mean).square_())
    return out.div_(len(deltas))


def selection_count(nonzero: int, select_topk: float) -> int:
    """k_sel = ⌊select_topk·#(Var ≠ 0)⌋."""
    return int(nonzero * select_topk)


def sce_weights(mean_squares: Sequence[float]) -> list[float]:
    """wᵢ = mean(δᵢ²)/Σⱼ mean(δⱼ²), or 1/k each when that sum is below 1e-6."""
    total = sum(mean_squares)
    if abs(total) < WEIGHT_FLOOR:
        return [1.0 / len(mean_squares)] * len(mean_squares)
    return [m / total for m in mean_squares]


def erase_and_mix(base: Tensor, deltas: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """θ_base + Σᵢ wᵢ·mᵢ·δᵢ / max(Σᵢ wᵢ·mᵢ, 1e-6), mᵢ = [δᵢ non-zero with the sign of Σⱼ δⱼ]."""
    sign = elect_sign(deltas, "sum")
    merged = torch.zeros_like(base)
    divisor = torch.zeros_like(base)
    for delta, weight in zip(deltas, weights, strict=True):
        erased = agreement(delta, sign).mul_(weight)
        merged.addcmul_(delta, erased)
        divisor.add_(erased)
    return merged.div_(divisor.clamp_(min=WEIGHT_FLOOR)).add_(base)


@register(
    "sce",
    params=SceParams,
    formula="θ = θ_base + Σᵢ wᵢ·mᵢ·sel(δᵢ) / Σᵢ wᵢ·mᵢ, wᵢ ∝ mean(sel(δᵢ)²), mᵢ = [sign agrees]",
    paper="https://arxiv.org/abs/2408.07990",
    kernel=lambda p, s, rng, shape: SceKernel(p, len(s), math.prod(shape)),
    semantics=lambda p: (
        (
            f"Select: keep the top {p.select_topk:g} share of elements by variance across the "
            "models (ties at the threshold kept); "
            if p.select_topk < 1
            else "Select: all elements; "
        )
        + "weights ∝ mean squared task vector per tensor; erase entries against the elected "
        "sign (sum); per-model weights are not used."
    ),
)
def sce(
    base: Tensor | None,
    inputs: Sequence[Tensor],
    sources: Sequence[SourceParams],
    params: SceParams,
    rng: RandomStream,
) -> Tensor:
    """SCE merge of k fine-tunes of ``base`` (Wan et al., 2024), steps as the module states."""
    assert base is not None
    deltas = task_vectors(base, inputs)
    if params.select_topk < 1:
        spread = variance(deltas).reshape(-1)
        keep = selection_count(int(torch.count_nonzero(spread)), params.select_topk)
        if keep == 0:
            mask = torch.zeros_like(spread, dtype=torch.bool)
        else:
            threshold = spread.kthvalue(spread.numel() - keep + 1).values
            mask = spread >= threshold
        mask = mask.reshape(base.shape)
        deltas = [d * as_float(mask) for d in deltas]
    mean_squares = [float(d.double().square().mean()) for d in deltas]
    return erase_and_mix(base, deltas, sce_weights(mean_squares))


class SceKernel(Kernel):
    """Select: pass 0 computes the variance, counts its zeros and histograms the high 16 bits of
    its bit patterns (non-negative floats order like their bits), and keeps those high bits
    (two bytes per element); at its end the k_sel-th largest variance's high half h* is known.
    Pass 1 only recomputes the variance of the few elements whose high half is h* (gathered),
    histograms their low bits and keeps them: an exact radix select of the k_sel-th largest
    variance t. Pass 2 forms the selection mask [Var ≥ t] from the kept bits (no variance),
    sums each model's squared selected task vector in float64 in offset order, and keeps the
    mask (one byte per element, as DARE's) for the output pass, which erases and mixes."""

    def __init__(self, params: SceParams, count: int, numel: int) -> None:
        super().__init__()
        self.select = params.select_topk < 1
        self.topk = params.select_topk
        self.count = count
        self.zeros = 0
        self.numel = max(1, numel)
        self.nothing = False  # k_sel = 0: every task vector is zeroed
        self.reductions = 3 if self.select else 1
        self.bucket = 0  # h*
        self.wanted = 0  # rank of t among the elements of bucket h*, from the top (1 = largest)
        self.cut = 0  # the low half of t
        self.highs: dict[int, Tensor] = {}  # offset → high halves (int16)
        self.lows: dict[int, tuple[Tensor, Tensor]] = {}  # offset → (positions, low halves)
        self.parts: dict[int, list[float]] = {}
        self.weights: list[float] = []
        self.masks: dict[int, Tensor] = {}
        self.parts_lock = threading.Lock()
        self.fast: _FastSelect | None = None  # the compiled path (set by `prepare`)

    # The torch path's histograms (768 KB), made when first counted into: the compiled path
    # (`_FastSelect`) never pays for zeroing fresh pages.
    @functools.cached_property
    def high_counts(self) -> Tensor:
        return torch.zeros(HIGH_BUCKETS, dtype=torch.int64)

    @functools.cached_property
    def low_counts(self) -> Tensor:
        return torch.zeros(LOW_BUCKETS, dtype=torch.int64)

    def _mask(self, offset: int) -> Tensor:
        """[Var ≥ t] of a chunk, from its kept high halves and its candidates' low halves."""
        with self.parts_lock:
            high = self.highs.pop(offset)
            positions, low = self.lows.pop(offset, (None, None))
        keep = high > self.bucket
        if positions is not None and low is not None:
            keep[positions] = low >= self.cut
        return keep

    def _selected(self, base: Tensor, inputs: Sequence[Tensor], offset: int) -> list[Tensor]:
        deltas = task_vectors(base, inputs)
        if not self.select:
            return deltas
        if self.nothing:
            return [torch.zeros_like(d) for d in deltas]
        with self.parts_lock:
            keep = self.masks.pop(offset)
        weights = as_float(keep)
        return [d.mul_(weights) for d in deltas]

    def prepare(self, base: Tensor | None, inputs: Sequence[Tensor]) -> None:
        assert base is not None
        if _method_loops.takes([base, *inputs], self.dtype, self.device) and len(inputs) > 1:
            self.fast = _FastSelect(self, base, inputs)
            self.raw_inputs, self.reductions = True, 1
            self.max_chunk = ELEMENTWISE_CHUNK  # (summed per `SUM_PART`: the same weights)

    def reduce(self, step: int, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> None:
        assert base is not None
        if self.fast is not None:
            self.fast.reduce(step, base, inputs, offset)
            return
        if self.select and step == 0:
            spread = variance(task_vectors(base, inputs))
            high = high_half(spread)
            counts = torch.bincount(high, minlength=HIGH_BUCKETS).cpu()
            zeros = int((spread == 0).sum())
            with self.lock:
                self.zeros += zeros
                self.high_counts += counts
            with self.parts_lock:
                self.highs[offset] = high.to(torch.int16)
            return
        if self.select and step == 1:
            if self.nothing:
                return
            with self.parts_lock:
                high = self.highs[offset]
            positions = (high == self.bucket).nonzero().squeeze(1)
            if positions.numel() == 0:
                return
            gathered = [x[positions] for x in inputs]
            spread = variance(task_vectors(base[positions], gathered))
            low = low_half(spread)
            counts = torch.bincount(low, minlength=LOW_BUCKETS).cpu()
            with self.lock:
                self.low_counts += counts
            with self.parts_lock:
                self.lows[offset] = (positions, low)
            return
        selected = task_vectors(base, inputs)
        if self.select and self.nothing:
            selected = [torch.zeros_like(d) for d in selected]
        elif self.select:
            keep = self._mask(offset)
            with self.parts_lock:
                self.masks[offset] = keep
            weights = as_float(keep)
            selected = [d.mul_(weights) for d in selected]
        squares = [float(d.double().square().sum()) for d in selected]
        with self.parts_lock:
            self.parts[offset] = squares

    def end_pass(self, step: int) -> None:
        if self.fast is not None:
            self.fast.end_pass(step)
            return
        if self.select and step == 0:
            keep = selection_count(self.numel - self.zeros, self.topk)
            self.nothing = keep == 0
            if not self.nothing:
                self.bucket, self.wanted = kth_from_top(self.high_counts, keep)
            else:
                self.highs.clear()
            return
        if self.select and step == 1:
            if not self.nothing:
                self.cut, _ = kth_from_top(self.low_counts, self.wanted)
            return
        sums = [0.0] * self.count
        for _, part in sorted(self.parts.items()):
            sums = [a + b for a, b in zip(sums, part, strict=True)]
        self.parts.clear()
        self.weights = sce_weights([s / self.numel for s in sums])

    def apply_into(
        self, base: Tensor | None, inputs: Sequence[Tensor], offset: int, out: Tensor
    ) -> bool:
        if self.fast is None or out.dtype not in _method_loops.STORED or not out.is_contiguous():
            return False
        assert base is not None
        self.fast.apply(base, inputs, out)
        return True

    def apply(self, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> Tensor:
        assert base is not None
        if self.fast is not None:
            out = torch.empty(base.numel(), dtype=torch.float32)
            self.fast.apply(base, inputs, out)
            return out
        return erase_and_mix(base, self._selected(base, inputs, offset), self.weights)


NOTHING = (1 << 32) - 1  # a Var bit threshold that keeps no element (k_sel = 0)


class _FastSelect:
    """SCE's compiled path (`_jit_sce`): the selection threshold t from a fixed sample of the
    variance verified by one counting pass (`SampledSelect`, as TIES's trim threshold), which
    also counts the zero variances (for k_sel) and sums each model's δᵢ² over the elements at or
    above the sample's candidate; when t is that candidate (the usual case: bf16 task vectors'
    variances repeat a few values many times) the weights are known after this one pass, else a
    pass gathers the few variances near it (rarely) and one more sums the squares at t. The
    output pass recomputes the variance per element (cheaper than keeping a mask).

    The float64 sums of δᵢ² are added in another order than the torch path's (eight lanes per
    run of `SUM_PART` elements, `_jit_sce.LANES`, the runs' sums in offset order: a chunk of
    several runs sums as those runs chunked apart), so they can differ from it by float64
    rounding (~1e-16 relative); the float32 weights the mix uses are then the same unless a
    weight lies that close to a float32 rounding boundary."""

    def __init__(self, kernel: SceKernel, base: Tensor, inputs: Sequence[Tensor]) -> None:
        self.kernel = weakref.proxy(kernel)  # (no cycle: the kernel's memory goes with it)
        self.loops = _method_loops.loops("_jit_sce")
        self.selector: SampledSelect | None = None
        self.bounds = np.zeros(SampledSelect.BOUNDS, dtype=np.int64)
        self.threshold = 0  # Var bits ≥ this are selected
        self.sum_from = 0  # the threshold the running pass sums the squares at
        self.known = False  # t is found (`threshold`)
        self.gathering = False  # the running pass gathers the variances near t
        self.parts: dict[int, tuple[int, np.ndarray, int, np.ndarray]] = {}
        self.lock = threading.Lock()
        if kernel.select:
            self._propose(base, inputs)
        else:
            self.known = True

    def _propose(self, base: Tensor, inputs: Sequence[Tensor]) -> None:
        numel = self.kernel.numel
        index = SampledSelect.sample_index(numel)
        pick = (lambda x: x) if index is None else (lambda x: x.index_select(0, index))
        sample_base = pick(base).float()
        spread = variance(task_vectors(sample_base, [pick(x) for x in inputs]))
        bits = spread.view(torch.int32).numpy().view(np.uint32)
        share = int(np.count_nonzero(bits)) / max(1, bits.size)
        if index is None:  # the whole tensor: t here
            keep = selection_count(int(np.count_nonzero(bits)), self.kernel.topk)
            self.known = True
            self.threshold = NOTHING if keep == 0 else int(np.sort(bits)[bits.size - keep])
            self.sum_from = self.threshold
            return
        guess = min(numel, max(1, round(self.kernel.topk * share * numel)))
        self.selector = SampledSelect(guess, numel)
        self.selector.propose(bits, whole=False)
        self.bounds[:] = self.selector.bounds
        self.sum_from = int(self.bounds[1])  # the sample's candidate

    def reduce(self, step: int, base: Tensor, inputs: Sequence[Tensor], offset: int) -> None:
        xs = tuple(as_array(x) for x in inputs)
        if self.gathering:  # the variances in the interval around t
            assert self.selector is not None
            low, high = self.selector.interval
            found = np.empty(self.selector.chunk_inside(offset) + 1, dtype=np.uint32)
            size = self.loops.sce_gather(as_array(base), xs, low, high, found)
            with self.lock:
                self.selector.gathered[offset] = found[:size]
            return
        counts = np.zeros(SampledSelect.BOUNDS, dtype=np.int64)
        sums = np.zeros((-(-base.numel() // SUM_PART), len(inputs)), dtype=np.float64)
        zeros = self.loops.sce_observe(as_array(base), xs, self.bounds, counts, self.sum_from,
                                       SUM_PART, sums)  # fmt: skip
        with self.lock:
            self.parts[offset] = (base.numel(), counts, zeros, sums)

    def _found(self, bits: int) -> None:
        self.known, self.threshold = True, bits

    def end_pass(self, step: int) -> None:
        kernel, selector = self.kernel, self.selector
        if self.gathering:
            assert selector is not None
            selector.finish_gather()
            self._found(int(selector.threshold.view(torch.int32)) & NOTHING)
            self.gathering = False
        elif not self.known:  # the counting pass: k_sel, then t or the interval holding it
            assert selector is not None
            zeros = sum(part[2] for part in self.parts.values())
            keep = selection_count(kernel.numel - zeros, kernel.topk)
            if keep == 0:
                self._found(NOTHING)
            else:
                selector.k = keep
                for offset, (length, counts, _, _) in self.parts.items():
                    selector.add_chunk(offset, length, counts)
                selector.decide()
                if selector.pending == 0:
                    self._found(int(selector.threshold.view(torch.int32)) & NOTHING)
                else:  # (a wide interval, from an unlucky sample, is gathered all the same)
                    selector.gathered = {}
                    self.gathering = True
        if self.threshold == NOTHING and self.known:  # every task vector is zeroed
            kernel.weights = sce_weights([0.0] * kernel.count)
        elif self.known and self.sum_from == self.threshold and not self.gathering:
            totals = [0.0] * kernel.count
            for _, (_, _, _, sums) in sorted(self.parts.items()):
                for part in sums:  # (each `SUM_PART` run's sums, in offset order)
                    totals = [a + float(b) for a, b in zip(totals, part, strict=True)]
            kernel.weights = sce_weights([s / kernel.numel for s in totals])
        else:  # one more pass: the gather, or the squares at t
            self.sum_from = self.threshold
            kernel.reductions = step + 2
        self.parts.clear()

    def apply(self, base: Tensor, inputs: Sequence[Tensor], out: Tensor) -> None:
        weights = np.asarray(self.kernel.weights, dtype=np.float32)
        self.loops.sce_apply(as_array(base), tuple(as_array(x) for x in inputs),
                             self.kernel.select, self.threshold, weights,
                             as_array(out))  # fmt: skip
