"""Chunked kernels: the same methods, computed over flat chunks with per-tensor statistics.

A method's pure function is the reference: it takes whole float32 tensors. For speed and
bounded memory the engine instead feeds a *kernel* flat chunks (a few MB each). A kernel may
first make reduction passes over the chunks to gather what the whole tensor determines — the
TIES trim threshold and the Breadcrumbs band (exact radix selects on the float bit patterns, no
sort; `_select`), DARE's L1 norms, SLERP's norms and angle — and then computes each output
chunk elementwise. Tests check every kernel against its pure function.

On CPU, `FamilyKernel` hands TIES and DARE-TIES chunks to fused compiled loops
(`_compiled`) when numba is there; they compute the same values bit for bit.

Kernels are called from several threads at once (one chunk each). Integer histograms are
added under a lock; floating-point partial sums are kept per chunk offset and added in offset
order at the end of the pass, so results never depend on thread timing.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from merging.methods import _compiled
from merging.methods._ops import (
    PARALLEL_THRESHOLD,
    RandomStream,
    as_float,
    combine_deltas,
    crumb_counts,
    delta_of,
    keep_count,
    keep_where,
)
from merging.methods._select import BandSelect, RadixSelect

WAIT_FOR_LOOPS = 1 << 20  # elements: from this tensor size on, wait for the compiled loops


class Kernel:
    """Base kernel: no reductions; subclasses implement `apply`.

    Chunks arrive converted to ``dtype`` (the compute dtype, set by the driver) unless
    ``raw_inputs`` is true: then they come in their stored dtype and the kernel converts what it
    needs (a mixed-dtype ``add_`` reads bf16 directly, saving a float32 copy per input).
    """

    reductions = 0
    raw_inputs = False
    dtype = torch.float32

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def reduce(self, step: int, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> None:
        """Observe one chunk during reduction pass ``step``."""

    def end_pass(self, step: int) -> None:
        """Called after every chunk was seen in reduction pass ``step``."""

    def apply(self, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> Tensor:
        raise NotImplementedError


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
        self.selectors = [
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
        self.numel = numel
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

    def _compiled(self, base: Tensor, inputs: Sequence[Tensor]) -> bool:
        large = self.numel >= WAIT_FOR_LOOPS  # worth waiting for the compiled loops to load
        return self.fusable and _compiled.wants(base, inputs, self.dtype, wait=large)

    def reduce(self, step: int, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> None:
        assert base is not None
        compiled = self._compiled(base, inputs)
        if compiled and self.sparsify == "magnitude":
            self._reduce_compiled(step, base, inputs)
            return
        stored, base = base, base.to(self.dtype)
        for index, x in enumerate(inputs):
            if self.dense[index]:
                continue
            # |δ| = |x − base| in float32, one fused loop when compiled
            magnitudes = _compiled.magnitudes(stored, x) if compiled else delta_of(x, base).abs_()
            selector, band = self.selectors[index], self.bands[index]
            if selector is not None:
                selector.observe(step, magnitudes)
            elif band is not None:
                band.observe(step, magnitudes, offset)
            else:
                keep = self._mask(index, offset, magnitudes.numel(), magnitudes.device)
                with self.lock:
                    self._masks[(index, offset)] = keep
                before = float(magnitudes.sum())
                after = float(torch.dot(magnitudes, as_float(keep, magnitudes.dtype)))
                with self.lock:
                    self._l1_parts[(index, offset)] = (before, after)

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
        mixed = combine_deltas(
            deltas,
            [s.weight for s in self.sources],
            consensus=self.consensus,
            normalize=self.params.normalize,
            divide_by=self.params.divide_by,
            sign_method=getattr(self.params, "sign_method", "sum"),
        )
        return mixed.mul_(self.params.lambda_).add_(base)  # = base + λ·mixed, in place

    def _apply_compiled(self, base: Tensor, inputs: Sequence[Tensor], offset: int) -> Tensor:
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
                    if before >= 1e-7 and after >= 1e-7:
                        rescale, scale = _compiled.RESCALE_MUL, before / after
            modes.append(mode)
            thresholds.append(threshold)
            keeps.append(keep)
            rescales.append(rescale)
            scales.append(scale)
        weights = [s.weight for s in self.sources]
        by_weight = self.params.divide_by == "weights"
        return _compiled.family_apply(
            base,
            inputs,
            modes=modes,
            thresholds=thresholds,
            keeps=keeps,
            rescales=rescales,
            scales=scales,
            weights=weights,
            divisor_weights=weights if by_weight else [1.0] * len(weights),
            sign_method=getattr(self.params, "sign_method", "sum"),
            normalize=self.params.normalize,
            lambda_=self.params.lambda_,
        )

    def _linear_combination(self, base: Tensor, inputs: Sequence[Tensor]) -> Tensor:
        """θ_base + λ·Σ wᵢ(θᵢ − θ_base)/d as (1 − λΣwᵢ/d)·θ_base + Σ (λwᵢ/d)·θᵢ: one pass per input,
        no task-vector temporaries (same value up to float rounding)."""
        weights = [s.weight for s in self.sources]
        total = sum(weights)
        if not self.params.normalize:
            divisor = 1.0
        elif self.params.divide_by == "weights":
            divisor = total if abs(total) >= 1e-8 else 1.0
        else:
            divisor = float(len(weights))
        scale = self.params.lambda_ / divisor
        out = base.to(self.dtype, copy=True).mul_(1.0 - scale * total)
        for weight, x in zip(weights, inputs, strict=True):
            out.add_(x, alpha=scale * weight)
        return out


class LinearKernel(Kernel):
    raw_inputs = True

    def __init__(self, params: Any, sources: Sequence[Any]) -> None:
        super().__init__()
        self.weights = [s.weight for s in sources]
        total = sum(self.weights)
        self.divisor = total if params.normalize and abs(total) > 1e-8 else 1.0

    def apply(self, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> Tensor:
        out = torch.zeros(inputs[0].shape, dtype=self.dtype, device=inputs[0].device)
        for weight, x in zip(self.weights, inputs, strict=True):
            out.add_(x, alpha=weight)
        return out.div_(self.divisor)


class SlerpKernel(Kernel):
    reductions = 1

    def __init__(self, params: Any) -> None:
        super().__init__()
        self.t = params.t
        self.parts: dict[int, tuple[float, float, float]] = {}  # offset → ‖v0‖², ‖v1‖², v0·v1
        self.coefficients: tuple[float, float] | None = None

    def reduce(self, step: int, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> None:
        assert base is not None
        v1 = inputs[0]
        part = (
            float((base * base).sum()),
            float((v1 * v1).sum()),
            float((base * v1).sum()),
        )
        with self.lock:
            self.parts[offset] = part

    def end_pass(self, step: int) -> None:
        sums = [0.0, 0.0, 0.0]
        for _, part in sorted(self.parts.items()):
            sums = [a + b for a, b in zip(sums, part, strict=True)]
        n0 = max(math.sqrt(sums[0]), 1e-8)
        n1 = max(math.sqrt(sums[1]), 1e-8)
        dot = sums[2] / (n0 * n1)
        if abs(dot) > PARALLEL_THRESHOLD:
            return
        omega = math.acos(max(-1.0, min(1.0, dot)))
        sin_omega = math.sin(omega)
        self.coefficients = (
            math.sin((1 - self.t) * omega) / sin_omega,
            math.sin(self.t * omega) / sin_omega,
        )

    def apply(self, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> Tensor:
        assert base is not None
        if self.coefficients is None:
            return torch.lerp(base, inputs[0], self.t)
        s0, s1 = self.coefficients
        return base * s0 + inputs[0] * s1
