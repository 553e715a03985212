"""Arcee Fusion: take the other model's change only where it matters most (mergekit 0.1.5's
``arcee_fusion``, ``merge_methods/arcee_fusion.py``; no parameters).

With a = θ_base and b = θ₁, per row (the last dimension; a vector is one row):

    KL_row = Σⱼ pⱼ·log(pⱼ/qⱼ),  p = softmax(b_row) + 1e-8,  q = softmax(a_row) + 1e-8
    importanceⱼ = |bⱼ − aⱼ|·KL_row
    τ = Q₅₀ + 1.5·(Q₇₅ − Q₂₅) of the importances over the tensor,
        Q_q = the ⌊q·(n − 1)⌋-th smallest (0-based)
    θ = a + (b − a)·[importance ≥ τ]

Quantiles are exact over the whole tensor. mergekit computes them on 10⁶ elements sampled
with replacement from torch's global generator once a tensor has more than 10⁶ elements, so
there its threshold differs from this one by sampling noise; up to 10⁶ elements both take
the same order statistics. The KL is the formula's value rounded once to float32 (`row_kl`:
evaluated in float64). mergekit evaluates it in float32, where the sum cancels: its terms are
~10³ times a fine-tune's row KL (~10⁻⁶), and the float32 softmaxes leave it a few ε₃₂ off in
absolute terms, 5-30 % of the KL, in digits that depend on the kernels torch picks (AVX2 and
AVX-512 flip ~1 % of the mask elements of a 0.25B fine-tune against each other; this KL flips
0.74 % (0.25B) and 0.88 % (1B) against mergekit's AVX-512 one, all with importances within
30 % of the threshold). On CPU with numba (bf16 or float32 inputs) the passes run as compiled
loops (`_FastFusion`): the KL by an algebra without cancellation (`_jit_fusion.row_kl`,
within 2 float32 ulps of the float64 value plus float64's own rounding, equal in most rows),
the passes after it with the torch path's values bit for bit.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from merging.methods import _method_loops
from merging.methods._base import MethodParams, SourceParams, register
from merging.methods._bit_select import HIGH_BUCKETS, from_halves
from merging.methods._kernels import ELEMENTWISE_CHUNK, Kernel
from merging.methods._method_loops import as_array
from merging.methods._ops import RandomStream
from merging.methods._vectors import CutRows, Layout, OrderStatistics, vectors_of

PROBABILITY_FLOOR = 1e-8
QUANTILES = (0.25, 0.5, 0.75)


def quantile_ranks(numel: int) -> list[int]:
    """0-based ascending ranks ⌊q·(n − 1)⌋ of Q₂₅, Q₅₀, Q₇₅ (float32 products, as mergekit)."""
    return [int(r) for r in (torch.tensor(QUANTILES) * (numel - 1)).long()]


def fusion_threshold(q1: Tensor, median: Tensor, q3: Tensor) -> Tensor:
    """τ = Q₅₀ + 1.5·(Q₇₅ − Q₂₅), in float32."""
    return median + 1.5 * (q3 - q1)


def row_kl(b_rows: Tensor, a_rows: Tensor) -> Tensor:
    """KL_row = Σⱼ pⱼ·log(pⱼ/qⱼ) per row, p = softmax(b) + 1e-8, q = softmax(a) + 1e-8: the
    semantics, evaluated in float64 and rounded once to float32, clamped at 0 as +0.0
    (importances must be non-negative floats for the radix select). Float64 because the sum
    cancels: its terms are ~10³ times the KL of a fine-tune's rows, so float32 softmaxes and
    log-ratios (mergekit's operations) leave only the leading digits of the KL, and which ones
    depends on the kernels torch picks. The compiled passes compute the same value
    (`_jit_fusion.row_kl`, within 2 float32 ulps)."""
    p = F.softmax(b_rows.double(), dim=-1).add_(PROBABILITY_FLOOR)
    q = F.softmax(a_rows.double(), dim=-1).add_(PROBABILITY_FLOOR)
    return torch.sum(p * (p / q).log_(), dim=-1).float().clamp(min=0).add_(0.0)


def importance_of(a: Tensor, b: Tensor) -> Tensor:
    """|b − a|·KL_row, rows along the last dimension."""
    rows_a, rows_b = vectors_of(a, "last"), vectors_of(b, "last")
    return ((rows_b - rows_a).abs_() * row_kl(rows_b, rows_a).unsqueeze(-1)).reshape(a.shape)


@register(
    "arcee_fusion",
    formula="θ = θ_base + (θ₁ − θ_base)·[|θ₁ − θ_base|·KL_row ≥ Q₅₀ + 1.5·IQR]",
    paper="https://github.com/arcee-ai/mergekit/blob/v0.1.5/mergekit/merge_methods/arcee_fusion.py",
    min_inputs=1,
    max_inputs=1,
    kernel=lambda p, s, rng, shape: ArceeFusionKernel(shape),
    semantics=lambda p: (
        "Importance = |θ₁ − θ_base| times the row's KL(softmax θ₁ ‖ softmax θ_base), its "
        "exact value rounded to float32 (mergekit's float32 KL keeps only its leading digits, "
        "which flips ~1 % of the elements near the threshold); keep the other model's change "
        "where importance ≥ median + 1.5·IQR (exact quantiles over the tensor; mergekit "
        "samples 10⁶ elements above 10⁶)."
    ),
)
def arcee_fusion(
    base: Tensor | None,
    inputs: Sequence[Tensor],
    sources: Sequence[SourceParams],
    params: MethodParams,
    rng: RandomStream,
) -> Tensor:
    """Arcee Fusion of the base and one other model (the module docstring's rule)."""
    assert base is not None
    other = inputs[0]
    importance = importance_of(base, other)
    ordered = importance.reshape(-1).sort().values
    q1, median, q3 = (ordered[r] for r in quantile_ranks(ordered.numel()))
    keep = importance >= fusion_threshold(q1, median, q3)
    return base + (other - base) * keep


class ArceeFusionKernel(Kernel):
    """Pass 0: KL per row, on each chunk's complete rows and, at the end of the pass, on the
    rows cut by chunk boundaries (kept aside meanwhile); passes 1–2: exact radix selects of the
    three quantiles of the importance; output pass: the masked change, elementwise."""

    reductions = 3

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.fast: _FastFusion | None = None  # the compiled passes (set by `prepare`)
        self.layout = Layout(shape, "last")
        self.cut = CutRows(self.layout.size)
        numel = max(1, math.prod(shape))
        self.quantiles = OrderStatistics([numel - r for r in quantile_ranks(numel)])
        self.kl = torch.zeros(self.layout.count)
        self.threshold = torch.tensor(0.0)

    def _importance(self, base: Tensor, other: Tensor, offset: int) -> Tensor:
        kl = self.layout.gather(self.kl.to(base.device), offset, base.numel())
        return (other - base).abs_().mul_(kl)

    def prepare(self, base: Tensor | None, inputs: Sequence[Tensor]) -> None:
        assert base is not None
        if _method_loops.takes([base, *inputs], self.dtype, self.device):
            self.fast = _FastFusion(self)
            self.fast.predict(base, inputs[0])
            self.raw_inputs, self.reductions = True, 1
            self.max_chunk = ELEMENTWISE_CHUNK  # (a row's KL is the same in any batch of rows)

    def _kl_rows(self, base: Tensor, other: Tensor, offset: int) -> None:
        """KL of the chunk's complete rows into `kl`; the cut rows' pieces are kept."""
        self.cut.keep(offset, [base, other])
        first, last = self.cut.complete(offset, base.numel())
        if first < last:
            inner = slice(first - offset, last - offset)
            cols = self.layout.size
            kl = row_kl(other[inner].reshape(-1, cols), base[inner].reshape(-1, cols))
            self.kl[first // cols : last // cols] = kl.cpu()  # disjoint rows: no lock

    def reduce(self, step: int, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> None:
        assert base is not None
        other = inputs[0]
        if self.fast is not None:
            self.fast.reduce(step, base, other, offset)
            return
        if step == 0:
            self._kl_rows(base, other, offset)
        else:
            self.quantiles.observe(step - 1, self._importance(base, other, offset))

    def _cut_rows(self) -> None:
        """The KL of the rows cut by chunk boundaries into `kl` (one `row_kl` call over all of
        them, stacked: a row's KL does not depend on the rows beside it)."""
        rows = self.cut.rows()
        if rows:
            bases = torch.stack([pieces[0] for _, pieces in rows])
            others = torch.stack([pieces[1] for _, pieces in rows])
            self.kl[[row for row, _ in rows]] = row_kl(others, bases).cpu()

    def end_pass(self, step: int) -> None:
        if self.fast is not None:
            self.fast.end_pass(step)
            return
        if step == 0:
            self._cut_rows()
            return
        self.quantiles.end_pass(step - 1)
        if step == 2:
            self.threshold = fusion_threshold(*self.quantiles.values)

    def apply_into(
        self, base: Tensor | None, inputs: Sequence[Tensor], offset: int, out: Tensor
    ) -> bool:
        if self.fast is None or out.dtype not in _method_loops.STORED or not out.is_contiguous():
            return False
        assert base is not None
        self.fast.apply(base, inputs[0], offset, out)
        return True

    def apply(self, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> Tensor:
        assert base is not None
        other = inputs[0]
        if self.fast is not None:
            out = torch.empty(base.numel(), dtype=torch.float32)
            self.fast.apply(base, other, offset, out)
            return out
        keep = self._importance(base, other, offset) >= self.threshold.to(base.device)
        return (other - base).mul_(keep).add_(base)


_scratch = threading.local()  # per thread: the buffers `_FastFusion` gathers into
SAMPLE_ROWS = 64  # rows, spread over the tensor, whose importances predict the quantiles' buckets
MARGIN = 0.015  # the predicted buckets: the sample's quantiles ± this fraction of its elements


def _found(length: int) -> np.ndarray:
    """This thread's gather buffers, one a range, each at least ``length`` + 1 long (reused: a
    fresh buffer's pages fault in on every chunk)."""
    found = getattr(_scratch, "found", None)
    if found is None or found.shape[1] <= length:
        found = _scratch.found = np.empty((3, length + 1), dtype=np.uint32)
    return found


class _FastFusion:
    """The compiled passes (`_jit_fusion`): pass 0 computes each row's KL
    (`_jit_fusion.row_kl`: `row_kl`'s value within 2 float32 ulps) and, the row still in
    cache, counts the importances below each of three ranges of bit patterns a sample
    predicted for the quantiles and gathers those inside them (the cut rows at the end of the
    pass, from their kept pieces); each exact quantile is then picked from its range's values
    by a partition. Where a quantile is outside its range, pass 1 histograms the high 16 bits
    of the importances and pass 2 gathers the buckets that hold the quantiles. Then the
    output pass. From the rows' KL on, the same importances, quantiles and outputs as the
    torch path would give (bit for bit), which takes one or two more passes and torch's
    histograms."""

    def __init__(self, kernel: ArceeFusionKernel) -> None:
        self.kernel = weakref.proxy(kernel)  # (no cycle: the kernel's memory goes with it)
        self.loops = _method_loops.loops("_jit_fusion")
        self.cols = kernel.layout.size
        self.ranks = quantile_ranks(kernel.layout.numel)
        self.counts: dict[int, np.ndarray] = {}  # thread → its histogram (pass 1)
        self.below: dict[int, np.ndarray] = {}  # thread → its counts below each range
        # per quantile: lowest and highest bit pattern gathered (none until `predict`)
        self.ranges = np.array([[0xFFFFFFFF] * 3, [0] * 3], dtype=np.uint32)
        self.gathered: dict[int, list[np.ndarray]] = {}  # per part: each range's values
        self.lock = threading.Lock()

    def predict(self, base: Tensor, other: Tensor) -> None:
        """Set `ranges` to the high-half buckets that hold the importances of `SAMPLE_ROWS`
        rows (all rows when there are no more) of ranks (q ± `MARGIN`)·(m − 1), for each
        quantile q, and those between."""
        rows = base.numel() // self.cols
        if rows == 0:
            return
        picked = np.unique(np.linspace(0, rows - 1, min(SAMPLE_ROWS, rows)).astype(np.int64))
        counts = np.zeros(HIGH_BUCKETS, dtype=np.int64)
        self.loops.sample_counts(as_array(base), as_array(other), self.cols, picked, counts)
        below = np.cumsum(counts)  # below[h] = #sample elements in buckets ≤ h
        last = picked.size * self.cols - 1
        for i, q in enumerate(QUANTILES):
            low, high = (min(last, max(0, int((q + m) * last))) for m in (-MARGIN, MARGIN))
            first, final = np.searchsorted(below, [low, high], side="right")
            self.ranges[:, i] = first << 16, (final << 16) | 0xFFFF

    def _span(self, offset: int, length: int) -> tuple[np.ndarray, int]:
        """The KL of the rows a span of ``length`` elements from ``offset`` touches, and the
        span's column in its first row."""
        first = offset // self.cols
        last = (offset + length - 1) // self.cols + 1
        return self.kernel.kl.numpy()[first:last], offset - first * self.cols

    def _thread_array(self, arrays: dict[int, np.ndarray], size: int) -> np.ndarray:
        key = threading.get_ident()
        with self.lock:
            array = arrays.get(key)
            if array is None:
                array = arrays[key] = np.zeros(size, dtype=np.int64)
        return array

    def _keep(self, key: int, found: np.ndarray, ends: np.ndarray) -> None:
        parts = [values[:end].copy() for values, end in zip(found, ends, strict=True)]
        with self.lock:
            self.gathered[key] = parts

    def reduce(self, step: int, base: Tensor, other: Tensor, offset: int) -> None:
        below = self._thread_array(self.below, 3)
        if step == 0:
            cut = self.kernel.cut
            cut.keep(offset, [base, other])
            first, last = cut.complete(offset, base.numel())
            if first < last:
                inner = slice(first - offset, last - offset)
                kl = self.kernel.kl.numpy()[first // self.cols : last // self.cols]
                found, ends = _found(last - first), np.zeros(3, dtype=np.int64)
                self.loops.kl_gather(as_array(base[inner]), as_array(other[inner]), self.cols,
                                     kl, self.ranges, below, found, ends)  # fmt: skip
                self._keep(offset, found, ends)
            return
        kl, column = self._span(offset, base.numel())
        if step == 1:
            counts = self._thread_array(self.counts, HIGH_BUCKETS)
            self.loops.high_counts(as_array(base), as_array(other), kl, column, self.cols, counts)
            return
        found, ends = _found(base.numel()), np.zeros(3, dtype=np.int64)
        self.loops.gather_ranges(as_array(base), as_array(other), kl, column, self.cols,
                                 self.ranges, below, found, ends)  # fmt: skip
        self._keep(offset, found, ends)

    def end_pass(self, step: int) -> None:
        if step == 0:
            below = self._thread_array(self.below, 3)
            for row, (base_row, other_row) in self.kernel.cut.rows():
                kl = self.kernel.kl.numpy()[row : row + 1]
                found, ends = _found(base_row.numel()), np.zeros(3, dtype=np.int64)
                self.loops.kl_gather(as_array(base_row), as_array(other_row), base_row.numel(),
                                     kl, self.ranges, below, found, ends)  # fmt: skip
                self._keep(-1 - row, found, ends)  # (any key: the order does not matter)
        if step == 1:
            self._bucket_ranges()
            return
        if not self._select():
            assert step == 0, "the buckets located in pass 1 hold the quantiles"
            self.gathered.clear()  # a quantile outside its range: passes 1 and 2
            self.below.clear()
            self.kernel.reductions = 3

    def _bucket_ranges(self) -> None:
        """`ranges` = the high-half buckets that hold the quantiles, from pass 1's counts."""
        quantiles = self.kernel.quantiles
        total = sum(self.counts.values())
        self.counts.clear()
        quantiles.high_hist = torch.from_numpy(np.asarray(total, dtype=np.int64))
        quantiles.locate_buckets()
        for i, (bucket, _) in enumerate(quantiles.buckets):
            self.ranges[:, i] = bucket << 16, (bucket << 16) | 0xFFFF

    def _select(self) -> bool:
        """The quantiles, from the gathered values, and the threshold; False where a quantile
        is not inside its range."""
        parts = list(self.gathered.values())
        self.gathered.clear()
        below = sum(self.below.values(), np.zeros(3, dtype=np.int64))
        self.below.clear()
        values = []
        for i, (rank, lower) in enumerate(zip(self.ranks, below, strict=True)):
            index = rank - int(lower)  # the quantile's ascending rank among its range's values
            if not 0 <= index < sum(part[i].size for part in parts):
                return False
            inside = np.concatenate([part[i] for part in parts])
            bits = int(np.partition(inside, index)[index])
            values.append(from_halves(bits >> 16, bits & 0xFFFF))
        self.kernel.quantiles.values = values
        self.kernel.threshold = fusion_threshold(*values)
        return True

    def apply(self, base: Tensor, other: Tensor, offset: int, out: Tensor) -> None:
        kl, column = self._span(offset, base.numel())
        threshold = np.float32(float(self.kernel.threshold))
        self.loops.fuse(as_array(base), as_array(other), kl, column, self.cols, threshold,
                        as_array(out))  # fmt: skip
