"""Exact order statistics of |δ| over chunks, without sorting: the TIES trim threshold and
the Breadcrumbs band.

Non-negative floats order like their int32 bit patterns, so the k-th largest magnitude is found
by a radix select over two histogram passes (high 16 bits, then low 16 bits in the bucket that
holds it). Breadcrumbs' band also needs the stable sort's tie order, recovered in one more pass
that counts, per chunk, the elements below and equal to each boundary value.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
import torch
from torch import Tensor

from merging.methods._bit_select import from_halves


def _select(values: Tensor, mask: Tensor) -> Tensor:
    """Boolean selection; on CPU through NumPy, whose compress is ~10x faster than torch's."""
    if values.device.type == "cpu":
        return torch.from_numpy(values.numpy()[mask.numpy()])
    return values[mask]


class RadixSelect:
    """Exact k-th largest value of non-negative float32s seen in chunks, in two passes.

    Non-negative floats order like their int32 bit patterns: pass 0 histograms the high 16 bits,
    pass 1 the low 16 bits of the elements in the bucket that holds the k-th largest.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.lock = threading.Lock()
        self.high = 0
        self.need = 0
        self.threshold = torch.tensor(0.0)

    # The histograms (768 KB) are made when first counted into: a kernel that finds its
    # threshold another way (`SampledSelect`) never pays for zeroing fresh pages.
    @functools.cached_property
    def high_hist(self) -> Tensor:
        return torch.zeros(1 << 15, dtype=torch.int64)

    @functools.cached_property
    def low_hist(self) -> Tensor:
        return torch.zeros(1 << 16, dtype=torch.int64)

    def observe(self, step: int, magnitudes: Tensor) -> None:
        bits = magnitudes.contiguous().view(torch.int32)
        high = bits >> 16
        if step == 0:
            counts = torch.bincount(high, minlength=1 << 15).cpu()
            with self.lock:
                self.high_hist += counts
        else:
            low = _select(bits, high == self.high) & 0xFFFF
            counts = torch.bincount(low, minlength=1 << 16).cpu()
            with self.lock:
                self.low_hist += counts

    def add_counts(self, step: int, counts: Tensor) -> None:
        """Add a chunk's histogram for pass ``step``, counted elsewhere (the compiled loops):
        of the high 16 bits in pass 0, of the low 16 bits within bucket `high` in pass 1."""
        with self.lock:
            (self.high_hist if step == 0 else self.low_hist).add_(counts)

    @staticmethod
    def _locate(hist: Tensor, k: int) -> tuple[int, int]:
        """Bucket holding the k-th largest, and how many of its elements are needed."""
        counts = hist.numpy()[::-1]  # NumPy: torch's flip and cumsum are 10x slower here
        from_top = np.cumsum(counts)
        index = int(np.searchsorted(from_top, k))
        bucket = hist.numel() - 1 - index
        above = int(from_top[index]) - int(counts[index])
        return bucket, k - above

    def end_pass(self, step: int) -> None:
        if step == 0:
            self.high, self.need = self._locate(self.high_hist, self.k)
        else:
            low, _ = self._locate(self.low_hist, self.need)
            bits = torch.tensor([(self.high << 16) | low], dtype=torch.int32)
            self.threshold = bits.view(torch.float32)[0]


class SampledSelect:
    """The same k-th largest |δ| as `RadixSelect` (bit patterns, ties included), found from a
    fixed sample and one cheap counting pass instead of two histogram passes.

    `propose` takes the |δ| bit patterns of a sample (evenly spaced runs of the tensor) and
    picks a few candidate values around the sample's k-th largest. The counting pass counts,
    for each candidate c, the elements ≥ c and ≥ c + 1 (that is, > c). The threshold t is the
    one value with #(> t) < k ≤ #(≥ t): when a candidate satisfies it (the usual case on bf16
    task vectors, whose magnitudes repeat a few values many times), the search is over. Else t
    lies strictly between two neighbouring candidates: one more pass gathers the elements in
    that interval (a fraction of a percent of them) and a partition picks t among them; if the
    interval is wide (an unlucky sample), two radix passes find t as `RadixSelect` does. The
    sample only decides how fast t is found, never which t: the counts verify it exactly.

    With ``pair`` (bf16 task vectors, where c is nearly always t) the counting pass counts c
    and c + 1 only, half the compares; when c is not t, one more pass counts all four bounds
    (``recount``) and the search goes on from there as above.
    """

    RUNS, RUN = 64, 512  # sample: 64 evenly spaced runs of 512 elements
    SPREAD = 4  # the interval's ends: SPREAD standard errors of rank from the sample's k-th
    BOUNDS = 4  # per model: low end, candidate c, c + 1, high end
    TOP = 1 << 31  # above every |δ| bit pattern

    def __init__(self, k: int, numel: int, *, pair: bool = False) -> None:
        self.k, self.numel, self.pair = k, numel, pair
        self.threshold = torch.tensor(0.0)
        self.bounds = np.zeros(self.BOUNDS, dtype=np.int64)
        self.counts = np.zeros(self.BOUNDS, dtype=np.int64)
        self.pending = 1  # passes still needed: 0 found, 1 count, then 1 gather or 2 radix
        self.chunks: dict[int, tuple[int, np.ndarray]] = {}  # offset → (numel, counts), pass 0
        self.interval = (0, 0)
        self.need = 0
        self.radix: RadixSelect | None = None
        self.recount = False  # the next pass counts the four bounds (a pair that missed t)
        self.radix_start = 1  # the pass at which the radix passes (if any) begin

    @classmethod
    def sample_index(cls, numel: int) -> Tensor | None:
        """Positions of the sample, or None when the tensor is small enough to take whole."""
        if numel <= cls.RUNS * cls.RUN * 2:
            return None
        starts = np.linspace(0, numel - cls.RUN, cls.RUNS).astype(np.int64)
        return torch.from_numpy((starts[:, None] + np.arange(cls.RUN)[None, :]).reshape(-1))

    def _found(self, bits: int) -> None:
        self.threshold = from_halves(bits >> 16, bits & 0xFFFF)
        self.pending = 0

    def propose(self, sample: np.ndarray, whole: bool) -> None:
        """Candidates from the sample's |δ| bit patterns; a whole tensor is selected here."""
        size = sample.size
        if whole:
            self._found(int(np.partition(sample, size - self.k)[size - self.k]))
            return
        rank = min(size - 1, max(0, round(self.k * size / self.numel)))  # from the top
        p = rank / size
        step = self.SPREAD * max(1, math.ceil(math.sqrt(size * p * (1 - p))))
        ranks = [size - 1 - min(size - 1, max(0, rank + j * step)) for j in (1, 0, -1)]
        low, value, high = (int(v) for v in np.partition(sample, ranks)[ranks])
        top = self.TOP - 1
        self.bounds[:] = [low, value, min(value + 1, top), min(max(high, value + 1), top)]

    def guess(self) -> float:
        """The threshold if found, else the sample's candidate c: the usual outcome of the
        counting pass on bf16 task vectors (a speculative output pass may use it)."""
        if self.pending == 0:
            return float(self.threshold)
        candidate = int(self.bounds[1])
        return float(from_halves(candidate >> 16, candidate & 0xFFFF))

    def add_chunk(self, offset: int, numel: int, counts: np.ndarray) -> None:
        self.chunks[offset] = (numel, counts)

    @staticmethod
    def _extended(numel: int, counts: np.ndarray) -> list[int]:
        """#(≥ b) for b = 0, the bounds (ascending), 2³¹."""
        return [numel, *(int(c) for c in counts), 0]

    def decide(self, step: int = 0) -> None:
        """After counting pass ``step``: t itself, or the interval [low, high) that holds it
        (after a pair that missed t: a recount)."""
        for _, counts in self.chunks.values():
            self.counts += counts
        if self.pair:  # only #(≥ c) and #(≥ c + 1) were counted
            self.pair = False
            if self.counts[1] >= self.k > self.counts[2]:
                self._found(int(self.bounds[1]))
            else:  # count all four next pass (then at least a gather)
                self.recount, self.pending = True, 2
                self.counts[:] = 0
                self.chunks.clear()
            return
        self.recount = False
        self.radix_start = step + 1
        bounds = [0, *(int(b) for b in self.bounds), self.TOP]
        at_least = self._extended(self.numel, self.counts)
        low = max(i for i, count in enumerate(at_least) if count >= self.k)
        high = low + 1
        if bounds[high] == bounds[low] + 1:
            self._found(bounds[low])
            return
        self.interval = (bounds[low], bounds[high])
        self.need = self.k - at_least[high]
        self._edges = (low, high)
        if at_least[low] - at_least[high] <= max(1 << 16, self.numel // 16):
            self.pending = 1  # gather the interval
            self.gathered: dict[int, np.ndarray] = {}
        else:
            self.pending = 2  # an unlucky sample: radix-select, as RadixSelect does
            self.radix = RadixSelect(self.k)

    def chunk_inside(self, offset: int) -> int:
        """How many of a chunk's elements lie in the interval (from the counting pass)."""
        numel, counts = self.chunks[offset]
        at_least = self._extended(numel, counts)
        low, high = self._edges
        return at_least[low] - at_least[high]

    def finish_gather(self) -> None:
        values = np.concatenate([self.gathered[o] for o in sorted(self.gathered)])
        index = values.size - self.need
        self._found(int(np.partition(values, index)[index]))


class BandSelect:
    """Breadcrumbs: the ascending ranks [lo, hi) of |δ| in a stable sort (ties by index), with
    lo = n − top − keep and hi = n − top, in three passes over the chunks.

    Passes 0–1 radix-select the values at ranks lo and hi (the (top+keep)-th and top-th
    largest); pass 2 counts, per chunk, the elements below and equal to each of them. A tie
    at the value of rank lo is kept when its index among those ties, in element order, is at
    least lo − #(below); a tie at the value of rank hi when it is below hi − #(below).
    """

    passes = 3

    def __init__(self, numel: int, keep: int, top: int) -> None:
        self.lo, self.hi = numel - top - keep, numel - top
        self.low = RadixSelect(top + keep)
        self.high = RadixSelect(top) if top > 0 else None
        self.lock = threading.Lock()
        self._counts: dict[int, tuple[int, int, int, int]] = {}
        self._before: dict[int, tuple[int, int]] = {}
        self._first_lo = 0  # ties at the low value before this tie index are dropped
        self._end_hi = 0  # ties at the high value from this tie index on are dropped

    def _values(self) -> tuple[Tensor, Tensor | None]:
        return self.low.threshold, None if self.high is None else self.high.threshold

    def observe(self, step: int, magnitudes: Tensor, offset: int) -> None:
        if step < 2:
            self.low.observe(step, magnitudes)
            if self.high is not None:
                self.high.observe(step, magnitudes)
            return
        v_lo, v_hi = self._values()
        low = (int((magnitudes < v_lo).sum()), int((magnitudes == v_lo).sum()))
        if v_hi is not None:
            high = (int((magnitudes < v_hi).sum()), int((magnitudes == v_hi).sum()))
        else:
            high = (0, 0)
        with self.lock:
            self._counts[offset] = (*low, *high)

    def end_pass(self, step: int) -> None:
        if step < 2:
            self.low.end_pass(step)
            if self.high is not None:
                self.high.end_pass(step)
            return
        below_lo = below_hi = seen_lo = seen_hi = 0
        for offset, (less_lo, eq_lo, less_hi, eq_hi) in sorted(self._counts.items()):
            self._before[offset] = (seen_lo, seen_hi)
            below_lo, below_hi = below_lo + less_lo, below_hi + less_hi
            seen_lo, seen_hi = seen_lo + eq_lo, seen_hi + eq_hi
        self._first_lo = self.lo - below_lo
        v_lo, v_hi = self._values()
        if v_hi is None:
            self._end_hi = 0
        elif bool(v_hi == v_lo):
            self._end_hi = self.hi - below_lo  # one run of ties holds both boundaries
        else:
            self._end_hi = self.hi - below_hi
        self._counts.clear()

    def mask(self, magnitudes: Tensor, offset: int) -> Tensor:
        """Which elements of this chunk lie in the band."""
        v_lo, v_hi = self._values()
        before_lo, before_hi = self._before[offset]
        at_lo = magnitudes == v_lo
        index_lo = at_lo.cumsum(0) - 1 + before_lo
        keep_lo = at_lo & (index_lo >= self._first_lo)
        if v_hi is None:
            return (magnitudes > v_lo) | keep_lo
        if bool(v_hi == v_lo):
            return keep_lo & (index_lo < self._end_hi)
        at_hi = magnitudes == v_hi
        index_hi = at_hi.cumsum(0) - 1 + before_hi
        keep_hi = at_hi & (index_hi < self._end_hi)
        return ((magnitudes > v_lo) & (magnitudes < v_hi)) | keep_lo | keep_hi
