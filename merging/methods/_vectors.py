"""Per-vector statistics over flat chunks, for the methods that work on rows, columns or whole
tensors as vectors (NuSLERP, Multi-SLERP, Karcher, DELLA, Arcee Fusion).

A tensor of shape ``shape`` is cut into vectors in one of three ways:

- ``flat``: the whole tensor is one vector;
- ``last``: vectors along the last dimension (the rows of a matrix): element ``p`` of the
  flattened tensor belongs to vector ``p // shape[-1]``;
- ``first``: vectors along the first dimension (the columns of a matrix; mergekit's
  ``transpose(0, -1)``): element ``p`` belongs to vector ``p % (numel // shape[0])``.

A 1-D tensor is one vector in every layout. `VectorSums` adds per-element values into
per-vector float64 sums chunk by chunk; the partial sums are kept per chunk offset and added in
offset order, so the result never depends on thread timing.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

Along = Literal["flat", "last", "first"]


class Layout:
    """Which vector each flat position belongs to (see the module docstring)."""

    def __init__(self, shape: Sequence[int], along: Along) -> None:
        self.numel = max(1, math.prod(shape))
        if along == "flat" or len(shape) < 2:
            self.along: Along = "flat"
            self.count = 1
        elif along == "last":
            self.along = "last"
            self.count = self.numel // max(1, shape[-1])
        else:
            self.along = "first"
            self.count = self.numel // max(1, shape[0])
        self.size = self.numel // self.count  # elements per vector

    def span(self, offset: int, length: int) -> tuple[int, int]:
        """(first vector, number of vectors) a chunk's sums are indexed over."""
        if self.along == "last":
            first = offset // self.size
            return first, (offset + length - 1) // self.size - first + 1
        return 0, self.count

    def index(self, offset: int, length: int, device: torch.device) -> Tensor | None:
        """Vector index (relative to `span`'s first) of each element; None for one vector."""
        if self.count == 1:
            return None
        positions = torch.arange(offset, offset + length, device=device)
        if self.along == "last":
            return positions // self.size - offset // self.size
        return positions % self.count

    def gather(self, values: Tensor, offset: int, length: int) -> Tensor:
        """Per-vector ``values`` (one per vector) broadcast to the chunk's elements."""
        if self.count == 1:
            return values[:1].expand(length)
        if self.along == "last":  # each value repeated over its row: a broadcast copy
            first, count = self.span(offset, length)
            start = offset - first * self.size
            rows = values[first : first + count].unsqueeze(1).expand(count, self.size)
            return rows.reshape(-1)[start : start + length]
        start = offset % self.count  # "first": the values tiled along the chunk
        tiles = -(-(start + length) // self.count)
        return values.repeat(tiles)[start : start + length]


def vector_sums(layout: Layout, products: Sequence[Tensor], offset: int) -> tuple[int, Tensor]:
    """(first vector, float64 sums of each product per vector) for one chunk."""
    length = products[0].numel()
    first, count = layout.span(offset, length)
    index = layout.index(offset, length, products[0].device)
    if index is None:
        sums = torch.stack([p.double().sum() for p in products]).unsqueeze(1)
        return first, sums.cpu()
    sums = torch.zeros(len(products), count, dtype=torch.float64, device=products[0].device)
    for row, product in enumerate(products):
        sums[row].index_add_(0, index, product.double())
    return first, sums.cpu()


class VectorSums:
    """Thread-safe per-vector sums of ``stats`` per-element values, added in offset order."""

    def __init__(self, layout: Layout, stats: int) -> None:
        self.layout = layout
        self.stats = stats
        self.lock = threading.Lock()
        self.parts: dict[int, tuple[int, Tensor]] = {}

    def add(self, products: Sequence[Tensor], offset: int) -> None:
        part = vector_sums(self.layout, products, offset)
        with self.lock:
            self.parts[offset] = part

    def total(self) -> Tensor:
        """(stats, vectors) float64 sums; the parts are dropped."""
        sums = torch.zeros(self.stats, self.layout.count, dtype=torch.float64)
        for _, (first, part) in sorted(self.parts.items()):
            sums[:, first : first + part.shape[1]] += part
        self.parts.clear()
        return sums


def vectors_of(x: Tensor, along: Along) -> Tensor:
    """The tensor as a (vectors, size) matrix in the layout's order (a copy when needed)."""
    if along == "flat" or x.dim() < 2:
        return x.reshape(1, -1)
    if along == "last":
        return x.reshape(-1, x.shape[-1])
    return x.reshape(x.shape[0], -1).t()  # vector j: flat positions ≡ j mod numel/shape[0]


def from_vectors(rows: Tensor, shape: Sequence[int], along: Along) -> Tensor:
    """Inverse of `vectors_of`."""
    if along == "flat" or len(shape) < 2 or along == "last":
        return rows.reshape(shape)
    return rows.t().reshape(shape)


class CutRows:
    """Rows of ``cols`` consecutive flat elements seen in chunks: each chunk's complete rows
    are handled at once; the pieces of rows cut by chunk boundaries (at most two per chunk) are
    kept until the pass ends and then handed out as whole rows, in row order."""

    def __init__(self, cols: int) -> None:
        self.cols = max(1, cols)
        self.lock = threading.Lock()
        self.pieces: dict[int, dict[int, list[Tensor]]] = {}  # row → {start: [piece per input]}

    def complete(self, offset: int, length: int) -> tuple[int, int]:
        """[first, last): the flat span of the chunk's complete rows (empty if none)."""
        end = offset + length
        first = -(-offset // self.cols) * self.cols
        last = end // self.cols * self.cols
        if first >= last:  # no complete row: at most a row's end and the next one's start
            first = last = min(first, end)
        return first, last

    def keep(self, offset: int, values: Sequence[Tensor]) -> None:
        """Keep the parts of the chunk at ``offset`` outside its complete rows."""
        length = values[0].numel()
        first, last = self.complete(offset, length)
        with self.lock:
            for lo, hi in ((offset, first), (last, offset + length)):
                if lo < hi:
                    parts = [v[lo - offset : hi - offset].clone() for v in values]
                    self.pieces.setdefault(lo // self.cols, {})[lo] = parts

    def rows(self) -> list[tuple[int, list[Tensor]]]:
        """(row, whole row per input) for every cut row, in row order; the pieces are dropped."""
        out = []
        for row, parts in sorted(self.pieces.items()):
            starts = sorted(parts)
            out.append((row, [torch.cat([parts[s][i] for s in starts])
                              for i in range(len(parts[starts[0]]))]))  # fmt: skip
        self.pieces.clear()
        return out


class OrderStatistics:
    """Exact k-th largest values of non-negative float32s seen in chunks, for several k at
    once, in two passes that share their work: one histogram of the high 16 bits serves every
    k; pass 1 histograms the low 16 bits once per distinct high bucket. (The same radix select
    as `merging.methods._select.RadixSelect`, which takes one k.)"""

    def __init__(self, ks: Sequence[int]) -> None:
        self.ks = list(ks)
        self.lock = threading.Lock()
        self.high_hist = torch.zeros(1 << 15, dtype=torch.int64)
        self.buckets: list[tuple[int, int]] = []  # per k: (high bucket, rank within it)
        self.low_hists: dict[int, Tensor] = {}
        self.values: list[Tensor] = []

    @staticmethod
    def _locate(hist: Tensor, k: int) -> tuple[int, int]:
        from_top = hist.flip(0).cumsum(0)
        index = int(torch.searchsorted(from_top, torch.tensor(k)))
        bucket = hist.numel() - 1 - index
        return bucket, k - (int(from_top[index]) - int(hist[bucket]))

    def observe(self, step: int, values: Tensor) -> None:
        bits = values.contiguous().view(torch.int32)
        high = bits >> 16
        if step == 0:
            counts = torch.bincount(high, minlength=1 << 15).cpu()
            with self.lock:
                self.high_hist += counts
            return
        for bucket in self.low_hists:
            inside = high == bucket
            if bits.device.type == "cpu":  # NumPy's compress is ~10x faster than torch's
                selected = torch.from_numpy(bits.numpy()[inside.numpy()]) & 0xFFFF
            else:
                selected = bits[inside] & 0xFFFF
            counts = torch.bincount(selected, minlength=1 << 16).cpu()
            with self.lock:
                self.low_hists[bucket] += counts

    def locate_buckets(self) -> None:
        """`buckets` from the high-half histogram (the first half of `end_pass` of pass 0)."""
        self.buckets = [self._locate(self.high_hist, k) for k in self.ks]

    def end_pass(self, step: int) -> None:
        if step == 0:
            self.locate_buckets()
            self.low_hists = {b: torch.zeros(1 << 16, dtype=torch.int64) for b, _ in self.buckets}
            return
        self.values = []
        for bucket, need in self.buckets:
            low, _ = self._locate(self.low_hists[bucket], need)
            bits = torch.tensor([(bucket << 16) | low], dtype=torch.int32)
            self.values.append(bits.view(torch.float32)[0])
