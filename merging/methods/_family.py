"""The task-vector family over chunks: task arithmetic, TIES, DARE and Breadcrumbs.

On CPU, TIES and DARE-TIES chunks go to fused compiled loops (`_compiled`) when numba is there;
they compute the same values bit for bit, and write the output dtype straight into the
output buffer. On that path the TIES trim thresholds come from a sample verified by one
counting pass (`_select.SampledSelect`) instead of two radix histogram passes: the same
thresholds, found faster. That counting pass also writes the output with the sample's
candidate thresholds (`reduce_into`); when the counts prove every candidate exact (the usual
case for bf16 task vectors) the output pass is skipped and TIES reads its inputs once, else the
output pass overwrites every chunk. Without numba every step is a torch op with the same
results.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from merging.methods import _compiled, _spare
from merging.methods._kernels import ELEMENTWISE_CHUNK, SUM_PART, Kernel
from merging.methods._ops import (
    RandomStream,
    as_float,
    crumb_counts,
    delta_of,
    keep_count,
    keep_where,
    mix_deltas,
)
from merging.methods._sampled_trim import SampledTrims
from merging.methods._select import BandSelect, RadixSelect

WAIT_FOR_LOOPS = 1 << 20  # elements: from this tensor size on, wait for the compiled loops
DARE_CHUNK = 1 << 20  # elements per chunk for compiled DARE: fewer calls per tensor


class FamilyKernel(Kernel):
    """Task arithmetic, TIES, DARE and Breadcrumbs over chunks."""

    def __init__(
        self,
        sparsify: str,
        consensus: bool,
        params: Any,
        sources: Sequence[Any],
        rng: RandomStream,
        numel: int,
    ) -> None:
        super().__init__()
        self.sparsify = sparsify
        self.consensus = consensus
        self.params = params
        self.sources = sources
        self.rng = rng
        dense = [s.density >= 1 for s in sources] if sparsify != "none" else [True] * len(sources)
        self.dense = dense
        # RadixSelect, or SampledSelect once `prepare` chose the compiled path
        self.selectors: list[Any] = [
            None if d or sparsify != "magnitude" else RadixSelect(keep_count(numel, s.density))
            for d, s in zip(dense, sources, strict=True)
        ]
        self.bands = [
            None
            if d or sparsify != "outliers"
            else BandSelect(numel, *crumb_counts(numel, s.density, s.gamma))
            for d, s in zip(dense, sources, strict=True)
        ]
        self.l1 = [[0.0, 0.0] for _ in sources]
        self._l1_parts: dict[tuple[int, int], tuple[float, float]] = {}
        self._masks: dict[tuple[int, int], Tensor] = {}
        self._counts: dict[tuple[int, int], Any] = {}  # (pass, thread) → compiled histograms
        self.raw_inputs = True  # inputs only enter as x − base: a mixed-dtype subtraction
        # TIES / DARE-TIES chunks can run as fused compiled loops (same values; `_compiled`)
        self.fusable = consensus and sparsify in ("none", "magnitude", "random")
        if not consensus and all(dense):  # task arithmetic: elementwise, so chunking-free
            self.max_chunk = ELEMENTWISE_CHUNK
        self.numel = numel
        self.sampled: SampledTrims | None = None  # the compiled path's thresholds (`prepare`)
        if sparsify == "magnitude" and not all(dense):
            self.reductions = 2
        elif sparsify == "outliers" and not all(dense):
            self.reductions = BandSelect.passes
        elif sparsify == "random" and params.rescale == "l1" and not all(dense):
            self.reductions = 1

    def _mask(self, index: int, offset: int, length: int, device: torch.device) -> Tensor:
        """DARE's keep-mask for a chunk; drawn once when a reduction pass needs it too (the
        pass keeps it, one byte per element, until the output pass takes it)."""
        with self.lock:
            cached = self._masks.pop((index, offset), None)
        if cached is not None:
            return cached
        density = self.sources[index].density
        if device.type == "cpu" and _compiled.masks_ready():  # the same draws, compiled
            return _compiled.keep_mask(self.rng, index, offset, length, density)
        return self.rng.mask(index, offset, length, density).to(device)

    def _compiled(self, base: Tensor, inputs: Sequence[Tensor], *, linear: bool = False) -> bool:
        """Whether this chunk goes to the compiled loops (``linear``: task arithmetic's)."""
        # worth waiting for the compiled loops to load: TIES / DARE on a large tensor (task
        # arithmetic gains less than the wait: its chunks take torch's kernels meanwhile)
        wait = self.numel >= WAIT_FOR_LOOPS and not linear
        return (self.fusable or linear) and _compiled.wants(base, inputs, self.dtype, wait=wait)

    def prepare(self, base: Tensor | None, inputs: Sequence[Tensor]) -> None:
        """On the compiled path, propose each trim threshold from a sample of |δ| (a small
        tensor is selected whole here, with no pass at all); DARE takes bigger chunks."""
        trimmed = [i for i, s in enumerate(self.selectors) if s is not None]
        if base is None or self.device.type != "cpu" or not (trimmed or self.sparsify == "random"):
            return  # (the whole inputs are on CPU; an accelerator's chunks are not)
        if not self._compiled(base, inputs):
            return
        if self.sparsify == "random":
            self.max_chunk = DARE_CHUNK  # masks by block, L1 norms by `SUM_PART` runs
            return
        keeps = [None if s is None else s.k for s in self.selectors]
        speculate = getattr(self.params, "sign_method", "sum") == "sum"  # the fused loop's rule
        sampled = SampledTrims(keeps, self.numel, base, inputs, self.dtype, speculate=speculate)
        self.selectors, self.sampled = list(sampled.selectors), sampled
        if all(s is not None or d for s, d in zip(self.selectors, self.dense, strict=True)):
            self.max_chunk = 1 << 22  # counts, gathers and the apply are chunking-free
        self.reductions = sampled.passes

    def reduce(self, step: int, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> None:
        assert base is not None
        if self.sampled is not None:
            if step == 0:
                self.sampled.count(base, inputs, offset)
            else:
                self.sampled.observe(step, base, inputs, offset)
            return
        compiled = self._compiled(base, inputs)
        if compiled and self.sparsify == "magnitude":
            self._reduce_compiled(step, base, inputs)
            return
        stored, widened = base, None
        for index, x in enumerate(inputs):
            if self.dense[index]:
                continue
            selector, band = self.selectors[index], self.bands[index]
            if compiled and selector is None and band is None and _compiled.masks_ready():
                self._observe_runs(index, offset, stored, x)
                continue
            if compiled:  # |δ| = |x − base| in float32, one fused loop
                magnitudes = _compiled.magnitudes(stored, x)
            else:
                widened = stored.to(self.dtype) if widened is None else widened
                magnitudes = delta_of(x, widened).abs_()
            if selector is not None:
                selector.observe(step, magnitudes)
            elif band is not None:
                band.observe(step, magnitudes, offset)
            else:
                keep = self._mask(index, offset, magnitudes.numel(), magnitudes.device)
                self._keep_l1(index, offset, keep, magnitudes, as_float(keep, magnitudes.dtype))

    def reduce_into(
        self, step: int, base: Tensor | None, inputs: Sequence[Tensor], offset: int, out: Tensor
    ) -> bool:
        """TIES on the compiled path: the counting pass also writes the output with each
        sample's candidate threshold, the value the count usually proves exact (`end_pass`
        then skips the output pass; else the chunk is written again with the true ones)."""
        sampled = self.sampled
        if step != 0 or sampled is None or not sampled.speculate or base is None:
            return False
        if out.dtype not in _compiled.OUTPUT_DTYPES or not out.is_contiguous():
            return False
        weights, divisor_weights = self._consensus_weights()
        sampled.count_and_apply(
            base, inputs, offset, out, weights=weights, divisor_weights=divisor_weights,
            normalize=self.params.normalize, lambda_=self.params.lambda_,
        )  # fmt: skip
        return True

    def _observe_runs(self, index: int, offset: int, base: Tensor, x: Tensor) -> None:
        """DARE's reduction step compiled, a run of `SUM_PART` elements at a time: the mask,
        |δ| and the mask as floats in one loop, then torch's sum and dot of the run while its
        float views are in cache."""
        keep = torch.from_numpy(_spare.mask_buffer(x.numel()))
        parts = {}
        for start in range(0, x.numel(), SUM_PART):
            stop = min(x.numel(), start + SUM_PART)
            magnitudes, kept = _compiled.dare_observe(
                self.rng, index, offset + start, self.sources[index].density, base[start:stop],
                x[start:stop], keep[start:stop],
            )  # fmt: skip
            parts[(index, offset + start)] = _l1_norms(magnitudes, kept)
        self._keep(index, offset, keep, parts)

    def _keep_l1(
        self, index: int, offset: int, keep: Tensor, magnitudes: Tensor, kept: Tensor
    ) -> None:
        """Keep a chunk's mask for the output pass, and its L1 norms before and after it,
        summed over runs of `SUM_PART` elements."""
        parts = {
            (index, offset + start): _l1_norms(
                magnitudes[start : start + SUM_PART], kept[start : start + SUM_PART]
            )
            for start in range(0, magnitudes.numel(), SUM_PART)
        }
        self._keep(index, offset, keep, parts)

    def _keep(
        self, index: int, offset: int, keep: Tensor, parts: dict[tuple[int, int], Any]
    ) -> None:
        with self.lock:
            self._masks[(index, offset)] = keep
            self._l1_parts.update(parts)

    def _reduce_compiled(self, step: int, base: Tensor, inputs: Sequence[Tensor]) -> None:
        """Both radix passes of every trimmed input in one loop per chunk, counted into this
        thread's histograms (integer counts: summing them per thread is order-free)."""
        key = (step, threading.get_ident())
        with self.lock:
            counts = self._counts.get(key)
            if counts is None:
                counts = self._counts[key] = _compiled.histogram_buffer(step, len(inputs))
        active = [s is not None for s in self.selectors]
        highs = [0 if s is None else s.high for s in self.selectors]
        _compiled.magnitude_histograms(step, base, inputs, active, highs, counts)

    def _add_thread_counts(self, step: int) -> None:
        parts = [c for (s, _), c in self._counts.items() if s == step]
        if not parts:
            return
        total = parts[0]
        for part in parts[1:]:  # threads, then sub-histograms, in place
            total += part
        for sub in range(1, total.shape[1]):
            total[:, 0] += total[:, sub]
        for selector, row in zip(self.selectors, total[:, 0], strict=True):
            if selector is not None:
                selector.add_counts(step, torch.from_numpy(row))
        for part in parts:
            _compiled.release_buffer(part)
        self._counts.clear()

    def end_pass(self, step: int) -> None:
        if self.sampled is not None:
            self.applied = self.sampled.end_pass(step)
            self.reductions = 0 if self.applied else step + 1 + self.sampled.passes
            return
        self._add_thread_counts(step)
        for selector in (*self.selectors, *self.bands):
            if selector is not None:
                selector.end_pass(step)
        for (index, _), (before, after) in sorted(self._l1_parts.items()):
            self.l1[index][0] += before
            self.l1[index][1] += after
        self._l1_parts.clear()

    def _sparsified(self, index: int, delta: Tensor, offset: int) -> Tensor:
        if self.dense[index]:
            return delta
        selector = self.selectors[index]
        if selector is not None:
            return keep_where(delta, delta.abs() >= selector.threshold)
        band = self.bands[index]
        if band is not None:
            return keep_where(delta, band.mask(delta.abs(), offset))
        # delta is this chunk's own temporary: scale it in place
        keep = self._mask(index, offset, delta.numel(), delta.device)
        kept = delta.mul_(as_float(keep, delta.dtype))
        rule = self.params.rescale
        if rule == "density":
            return kept.div_(self.sources[index].density)
        if rule == "l1":
            before, after = self.l1[index]
            if before < 1e-7 or after < 1e-7:
                return kept
            return kept.mul_(before / after)
        return kept

    def apply(self, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> Tensor:
        assert base is not None
        if not self.consensus and all(self.dense):
            return self._linear_combination(base, inputs)
        if self._compiled(base, inputs):
            return self._apply_compiled(base, inputs, offset)
        base = base.to(self.dtype)
        deltas = [self._sparsified(i, delta_of(x, base), offset) for i, x in enumerate(inputs)]
        mixed = mix_deltas(deltas, self.sources, self.params, consensus=self.consensus)
        return mixed.mul_(self.params.lambda_).add_(base)  # = base + λ·mixed, in place

    def apply_into(
        self, base: Tensor | None, inputs: Sequence[Tensor], offset: int, out: Tensor
    ) -> bool:
        """The compiled loop writes bf16 / float32 output chunks itself (rounded as torch's
        conversion rounds)."""
        if base is None or out.dtype not in _compiled.OUTPUT_DTYPES or not out.is_contiguous():
            return False
        if not self._compiled(base, inputs, linear=not self.consensus and all(self.dense)):
            return False
        if not self.consensus and all(self.dense):
            scale, total = self._linear_scale()
            _compiled.linear_apply(base, inputs, base_scale=1.0 - scale * total,
                                   alphas=[scale * s.weight for s in self.sources],
                                   divisor=None, out=out)  # fmt: skip
        else:
            self._apply_compiled(base, inputs, offset, out)
        return True

    def _apply_compiled(
        self, base: Tensor, inputs: Sequence[Tensor], offset: int, out: Tensor | None = None
    ) -> Tensor:
        """`apply` as one fused loop; each sᵢ is specified as `_sparsified` computes it."""
        modes: list[int] = []
        thresholds: list[float] = []
        keeps: list[Any] = []
        rescales: list[int] = []
        scales: list[float] = []
        for index, source in enumerate(self.sources):
            mode, threshold, keep, rescale, scale = _compiled.DENSE, 0.0, None, 0, 1.0
            selector = self.selectors[index]
            if self.dense[index]:
                pass
            elif selector is not None:
                mode, threshold = _compiled.TRIM, float(selector.threshold)
            else:
                mode = _compiled.MASK
                keep = self._mask(index, offset, base.numel(), base.device).numpy()
                if self.params.rescale == "density":
                    rescale, scale = _compiled.RESCALE_DIV, source.density
                elif self.params.rescale == "l1":
                    before, after = self.l1[index]
                    if not (before < 1e-7 or after < 1e-7):  # as `_sparsified` (NaN too)
                        rescale, scale = _compiled.RESCALE_MUL, before / after
            modes.append(mode)
            thresholds.append(threshold)
            keeps.append(keep)
            rescales.append(rescale)
            scales.append(scale)
        weights, divisor_weights = self._consensus_weights()
        result = _compiled.family_apply(
            base,
            inputs,
            modes=modes,
            thresholds=thresholds,
            keeps=keeps,
            rescales=rescales,
            scales=scales,
            weights=weights,
            divisor_weights=divisor_weights,
            sign_method=getattr(self.params, "sign_method", "sum"),
            normalize=self.params.normalize,
            lambda_=self.params.lambda_,
            out=out,
        )
        _spare.release_masks(keeps)  # (each chunk's masks are read by this call only)
        return result

    def _consensus_weights(self) -> tuple[list[float], list[float]]:
        """The weights wᵢ and the divisor weights (wᵢ with ``divide_by: weights``, else 1)."""
        weights = [s.weight for s in self.sources]
        by_weight = self.params.divide_by == "weights"
        return weights, weights if by_weight else [1.0] * len(weights)

    def _linear_scale(self) -> tuple[float, float]:
        """λ/d and Σwᵢ of the task-arithmetic combination (d per ``normalize``/``divide_by``)."""
        total = sum(s.weight for s in self.sources)
        if not self.params.normalize:
            divisor = 1.0
        elif self.params.divide_by == "weights":
            divisor = total if abs(total) >= 1e-8 else 1.0
        else:
            divisor = float(len(self.sources))
        return self.params.lambda_ / divisor, total

    def _linear_combination(self, base: Tensor, inputs: Sequence[Tensor]) -> Tensor:
        """θ_base + λ·Σ wᵢ(θᵢ − θ_base)/d as (1 − λΣwᵢ/d)·θ_base + Σ (λwᵢ/d)·θᵢ: one pass per input,
        no task-vector temporaries (same value up to float rounding)."""
        weights = [s.weight for s in self.sources]
        scale, total = self._linear_scale()
        out = base.to(self.dtype, copy=True).mul_(1.0 - scale * total)
        for weight, x in zip(weights, inputs, strict=True):
            out.add_(x, alpha=scale * weight)
        return out


def _l1_norms(magnitudes: Tensor, kept: Tensor) -> tuple[float, float]:
    """A run's L1 norms before and after its mask (torch's own sum and dot: their summation
    order is part of the result; a run does not depend on the chunking)."""
    return float(magnitudes.sum()), float(torch.dot(magnitudes, kept))
