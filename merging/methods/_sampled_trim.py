"""TIES's trim thresholds on the compiled path: a sample, one counting pass, and (rarely) a
gather or radix passes (`_select.SampledSelect`), for every trimmed input of one tensor.

The counting pass can also write the tensor's output (`count_and_apply`) with each sample's
candidate threshold, the value the counts usually prove exact on bf16 task vectors: when every
candidate is proven (`end_pass` returns ``applied``), the output pass is skipped and TIES reads
its inputs once; else the output pass overwrites every chunk with the exact thresholds.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from merging.methods import _compiled
from merging.methods._ops import delta_of
from merging.methods._select import SampledSelect


class SampledTrims:
    """The `SampledSelect` of each trimmed input (None for a dense one), proposed from a fixed
    sample of |δ| (a small tensor is selected whole, with no pass at all).

    ``speculate``: whether `count_and_apply` may write the output (the fused loop elects
    the sign by the sum rule only). On bf16 inputs the counting pass counts each candidate
    and its successor only (`SampledSelect`'s ``pair``)."""

    def __init__(
        self, keeps: Sequence[int | None], numel: int, base: Tensor, inputs: Sequence[Tensor],
        dtype: torch.dtype, *, speculate: bool,
    ) -> None:  # fmt: skip
        self.lock = threading.Lock()
        index = SampledSelect.sample_index(numel)
        sample = (base if index is None else base.index_select(0, index)).to(dtype)
        self.pair = all(x.dtype == torch.bfloat16 for x in (base, *inputs))
        self.selectors: list[SampledSelect | None] = []
        for k, x in zip(keeps, inputs, strict=True):
            if k is None:
                self.selectors.append(None)
                continue
            picked = x if index is None else x.index_select(0, index)
            bits = delta_of(picked, sample).abs_().view(torch.int32).numpy().view(np.uint32)
            selector = SampledSelect(k, numel, pair=self.pair)
            selector.propose(bits, whole=index is None)
            self.selectors.append(selector)
        self.guesses = [0.0 if s is None else s.guess() for s in self.selectors]
        self.speculate = speculate
        self.declined = False  # a chunk of the counting pass went without writing its output

    @property
    def passes(self) -> int:
        """The passes still needed by the slowest input."""
        return max((s.pending for s in self.selectors if s is not None), default=0)

    def count(self, base: Tensor, inputs: Sequence[Tensor], offset: int) -> None:
        """Pass 0 without the output: count every pending input against its candidates."""
        self.declined = True
        active, bounds = self._bounds(len(inputs))
        counts = np.zeros(bounds.shape, dtype=np.int64)
        _compiled.bound_counts(base, inputs, active, bounds, counts, pair=self.pair)
        self._add_counts(active, offset, base.numel(), counts)

    def count_and_apply(
        self, base: Tensor, inputs: Sequence[Tensor], offset: int, out: Tensor, *,
        weights: Sequence[float], divisor_weights: Sequence[float], normalize: bool,
        lambda_: float,
    ) -> None:  # fmt: skip
        """Pass 0 and the chunk's output with the guessed thresholds, in one read."""
        active, bounds = self._bounds(len(inputs))
        counts = np.zeros(bounds.shape, dtype=np.int64)
        _compiled.count_trim_apply(
            base, inputs, active, bounds, counts, pair=self.pair, thresholds=self.guesses,
            weights=weights, divisor_weights=divisor_weights, normalize=normalize,
            lambda_=lambda_, out=out,
        )  # fmt: skip
        self._add_counts(active, offset, base.numel(), counts)

    def _bounds(self, models: int, *, recount: bool = False) -> tuple[list[bool], np.ndarray]:
        """Which inputs a counting pass counts (pass 0: every pending one; with ``recount``,
        the pairs that missed), and their candidate bounds."""
        active = [
            s is not None and s.pending > 0 and (s.recount or not recount) for s in self.selectors
        ]
        bounds = np.zeros((models, SampledSelect.BOUNDS), dtype=np.int64)
        for i, s in enumerate(self.selectors):
            if s is not None and active[i]:
                bounds[i] = s.bounds
        return active, bounds

    def _add_counts(self, active: Sequence[bool], offset: int, numel: int, counts: Any) -> None:
        with self.lock:
            for i, s in enumerate(self.selectors):
                if s is not None and active[i]:
                    s.add_chunk(offset, numel, counts[i])

    def observe(self, step: int, base: Tensor, inputs: Sequence[Tensor], offset: int) -> None:
        """Passes after the count: count the four bounds (a pair that missed), gather an
        interval, or (an unlucky sample) radix-select as `RadixSelect` does."""
        if any(s is not None and s.recount for s in self.selectors):  # all four bounds
            active, bounds = self._bounds(len(inputs), recount=True)
            counts = np.zeros(bounds.shape, dtype=np.int64)
            _compiled.bound_counts(base, inputs, active, bounds, counts)
            self._add_counts(active, offset, base.numel(), counts)
        for i, s in enumerate(self.selectors):
            if s is None or s.pending == 0 or s.recount:
                continue
            if s.radix is None:
                low, high = s.interval
                found = _compiled.gather_between(base, inputs[i], low, high, s.chunk_inside(offset))
                with self.lock:
                    s.gathered[offset] = found
            else:
                s.radix.observe(step - s.radix_start, _compiled.magnitudes(base, inputs[i]))

    def end_pass(self, step: int) -> bool:
        """Settle pass ``step``; True when the counting pass's output is TIES's own (every
        chunk written, every guess the exact threshold): no pass is needed after it."""
        for s in self.selectors:
            if s is None or s.pending == 0:
                continue
            if step == 0 or s.recount:
                s.decide(step)
            elif s.radix is None:
                s.finish_gather()
            else:
                s.radix.end_pass(step - s.radix_start)
                s.pending -= 1
                if s.pending == 0:
                    s.threshold = s.radix.threshold
        if step != 0 or not self.speculate or self.declined:
            return False
        return all(
            s is None or (s.pending == 0 and s.guess() == guess)
            for s, guess in zip(self.selectors, self.guesses, strict=True)
        )
