"""DELLA-Merging (Deep et al., 2024, arXiv 2406.11617): MagPrune, then TIES-style fusion.

MagPrune drops each task-vector entry at random with a keep probability that grows with its
magnitude rank *within its row*, then rescales. mergekit 0.1.5 (``sparsify.della_magprune``),
per model with ``density`` d and ``epsilon`` ε (d ± ε must lie in (0, 1) when d < 1):

    rᵢ = rank of |δᵢ| in its row (0 = smallest; ties by position), n = row length
    pᵢ = (d − ε) + 2ε·rᵢ/(n − 1)           (pᵢ = d − ε for one-element rows)
    keep δᵢ with probability pᵢ

Rows: a matrix's rows (the last dimension), a vector is one row, a tensor with more dimensions
is ranked along dim 1 (as mergekit's ``argsort(dim=1)``). Rescale (``rescale``): ``l1`` (the
mergekit default, ``rescale: true``) scales the kept entries so the tensor's L1 norm is
unchanged; ``probability`` divides each kept entry by its own pᵢ (the paper's 1/pᵢ);
``none`` (``rescale: false``) leaves them. ``della`` then elects signs and averages like TIES
(``normalize`` true by default); ``della_linear`` adds the weighted task vectors.

Randomness: element p of model i is kept when its 16-bit draw is below round(pᵢ·2¹⁶); draws
come from a PCG64DXSM stream per (recipe seed, tensor name, model index, 65,536-element block),
keyed apart from DARE's, so masks never depend on chunking, order, threads or device.
mergekit draws from torch's global generator, so only the distribution matches.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import Tensor

from merging.errors import RecipeError
from merging.methods._base import MethodParams, SourceParams, register
from merging.methods._della_fast import keep_mask
from merging.methods._della_fused import FusedDella
from merging.methods._kernels import Kernel
from merging.methods._ops import BLOCK, RandomStream, as_float, mix_deltas, task_vectors
from merging.methods.task_arithmetic import TaskArithmeticParams, TiesParams

DellaRescale = Literal["none", "l1", "probability"]
L1_FLOOR = 1e-7


def _rescale_from_mergekit(value: Any) -> Any:
    if isinstance(value, bool):  # mergekit: `rescale: true` means L1-norm rescaling
        return "l1" if value else "none"
    return value


class DellaParams(TiesParams):
    rescale: DellaRescale = "l1"
    _from_bool = field_validator("rescale", mode="before")(_rescale_from_mergekit)


class DellaLinearParams(TaskArithmeticParams):
    rescale: DellaRescale = "l1"
    _from_bool = field_validator("rescale", mode="before")(_rescale_from_mergekit)


class DellaSource(SourceParams):
    density: float = Field(1.0, gt=0, le=1)
    epsilon: float = Field(0.15, ge=0, lt=1)


def check_window(source: DellaSource, tensor: str) -> None:
    """mergekit's rule: with density < 1, density ± epsilon must lie strictly inside (0, 1)."""
    d, e = source.density, source.epsilon
    if d < 1 and (d + e >= 1 or d - e <= 0):
        raise RecipeError(
            f"della: density ± epsilon must lie in (0, 1) (density {d}, epsilon {e}, "
            f"tensor {tensor})"
        )


def draws(rng: RandomStream, source: int, offset: int, length: int) -> Tensor:
    """16-bit uniform draws (as int32) for flat elements [offset, offset + length)."""
    parts = []
    position, end = offset, offset + length
    while position < end:
        block, start = divmod(position, BLOCK)
        stop = min(BLOCK, start + end - position)
        key = f"della\x00{rng.seed}\x00{rng.tensor_name}\x00{source}\x00{block}".encode()
        seed = int.from_bytes(hashlib.sha256(key).digest()[:16], "little")
        raw = np.random.PCG64DXSM(seed).random_raw(BLOCK // 4).astype("<u8", copy=False)
        parts.append(raw.view("<u2")[start:stop])
        position += stop - start
    return torch.from_numpy(np.concatenate(parts).astype(np.int32))


def row_order(magnitudes: Tensor) -> Tensor:
    """Stable argsort of each row of non-negative floats. On CPU an LSD radix sort: NumPy's
    stable sort of 16-bit keys is a radix sort, and non-negative floats order like their bit
    patterns, so sorting by the low then (stably) by the high 16 bits gives the same order as
    a stable float sort, about 3x faster than torch's."""
    if magnitudes.device.type != "cpu":
        return magnitudes.argsort(dim=-1, stable=True)
    bits = magnitudes.contiguous().view(torch.int32).numpy()
    first = np.argsort((bits & 0xFFFF).astype(np.uint16), axis=-1, kind="stable")
    high = np.take_along_axis((bits >> 16).astype(np.uint16), first, -1)
    second = np.argsort(high, axis=-1, kind="stable")
    return torch.from_numpy(np.take_along_axis(first, second, -1))


def rank_probabilities(ranks: Tensor, n: int, density: float, epsilon: float) -> Tensor:
    """pᵣ = (d − ε) + 2ε·r/(n − 1) of integer ranks r in rows of n (d − ε when n = 1)."""
    scale = 0.0 if n == 1 else 1.0 / (n - 1)
    return ranks.float().mul_(scale).mul_(2 * epsilon).add_(density - epsilon)


def keep_probabilities(rows: Tensor, density: float, epsilon: float) -> Tensor:
    """pᵢ = (d − ε) + 2ε·rᵢ/(n − 1) per row of ``rows`` (ranks by |value|, ties by position)."""
    n = rows.shape[-1]
    order = row_order(rows.abs())  # abs clears the sign bit: −0.0 sorts as +0.0
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(n, device=rows.device).expand_as(order))
    return rank_probabilities(ranks, n, density, epsilon)


def keep_thresholds(n: int, density: float, epsilon: float) -> Tensor:
    """round(pᵣ·2¹⁶) for r = 0…n−1: a draw below it keeps the entry of rank r."""
    return (rank_probabilities(torch.arange(n), n, density, epsilon) * 65536).round_()


def keep_multiplier(probs: Tensor, draw: Tensor, rescale: DellaRescale) -> Tensor:
    """0/1 keep mask (draw < round(p·2¹⁶)), or keep/p with the ``probability`` rescale."""
    keep = draw.to(probs.device) < (probs * 65536).round_()
    return as_float(keep).div_(probs) if rescale == "probability" else as_float(keep)


def _rows_of(delta: Tensor) -> Tensor:
    if delta.dim() < 2:
        return delta.reshape(1, -1)
    return delta.movedim(1, -1) if delta.dim() > 2 else delta


def magprune(delta: Tensor, source: DellaSource, rescale: DellaRescale, rng: RandomStream,
             index: int) -> Tensor:  # fmt: skip
    """DELLA's MagPrune of one task vector (the module docstring's rule)."""
    if source.density >= 1:
        return delta
    check_window(source, rng.tensor_name)
    rows = _rows_of(delta)
    probs = keep_probabilities(rows, source.density, source.epsilon)
    probs = (probs.movedim(-1, 1) if delta.dim() > 2 else probs).reshape(delta.shape)
    draw = draws(rng, index, 0, delta.numel()).reshape(delta.shape)
    kept = delta * keep_multiplier(probs, draw, rescale)
    if rescale != "l1":
        return kept
    before, after = float(delta.abs().double().sum()), float(kept.abs().double().sum())
    return kept if before < L1_FLOOR or after < L1_FLOOR else kept * (before / after)


def _family(consensus: bool) -> Callable[..., Tensor]:
    def merge(base: Tensor | None, inputs: Sequence[Tensor], sources: Sequence[DellaSource],
              params: Any, rng: RandomStream) -> Tensor:  # fmt: skip
        assert base is not None
        deltas = [
            magprune(delta, source, params.rescale, rng, index)
            for index, (delta, source) in enumerate(
                zip(task_vectors(base, inputs), sources, strict=True)
            )
        ]
        mixed = mix_deltas(deltas, sources, params, consensus=consensus)
        return base + params.lambda_ * mixed

    return merge


class DellaKernel(Kernel):
    """One reduction pass: each chunk's complete rows are ranked and their keep masks drawn
    (kept until the output pass, one byte per element, like DARE's; four with the
    ``probability`` rescale); the pieces of rows cut by chunk boundaries (at most two per
    chunk) are kept aside and ranked as whole rows at the end of the pass; the L1 norms before
    and after (float64) are added in position order. The output pass applies the masks, the L1
    rescale and the TIES or linear fusion elementwise. On CPU with numba, `prepare` hands the
    tensor to the fused compiled loops (`_della_fused`: the same masks and output values; each
    chunk ranks the whole rows that start in it, so no row is cut)."""

    def __init__(
        self,
        consensus: bool,
        params: Any,
        sources: Sequence[DellaSource],
        rng: RandomStream,
        shape: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.consensus = consensus
        self.params = params
        self.sources = sources
        self.rng = rng
        self.cols = shape[-1] if len(shape) == 2 else max(1, math.prod(shape))
        self.sparse = [s.density < 1 for s in sources]
        for source, sparse in zip(sources, self.sparse, strict=True):
            if sparse:
                check_window(source, rng.tensor_name)
        self.reductions = 1 if any(self.sparse) else 0
        self.masks: dict[tuple[int, int], Tensor] = {}
        # (model, row) → {piece start: (chunk offset, |δ| of the piece)}
        self.pieces: dict[tuple[int, int], dict[int, tuple[int, Tensor]]] = {}
        self.l1: dict[tuple[int, int], tuple[float, float]] = {}  # (model, position) → sums
        self.scales = [1.0] * len(sources)
        self.tables: dict[tuple[int, int], Tensor] = {}  # (model, row length) → thresholds
        self.fused: FusedDella | None = None  # the compiled path, chosen by `prepare`

    def _mask(self, index: int, magnitudes: Tensor, start: int) -> Tensor:
        """Keep mask (or keep/p) for whole rows starting at flat position ``start``."""
        source = self.sources[index]
        rows = magnitudes.reshape(-1, self.cols)
        draw = draws(self.rng, index, start, magnitudes.numel())
        if self.params.rescale != "probability":  # the compiled loop, where it applies
            fast = keep_mask(rows, draw, self._thresholds(index))
            if fast is not None:
                return fast.reshape(-1)
        probs = keep_probabilities(rows, source.density, source.epsilon).reshape(-1)
        keep = draw.to(probs.device) < (probs * 65536).round_()
        return as_float(keep).div_(probs) if self.params.rescale == "probability" else keep

    def _thresholds(self, index: int) -> Callable[[int], Tensor]:
        source = self.sources[index]

        def table(n: int) -> Tensor:
            key = (index, n)
            with self.lock:
                if key not in self.tables:
                    self.tables[key] = keep_thresholds(n, source.density, source.epsilon)
                return self.tables[key]

        return table

    def prepare(self, base: Tensor | None, inputs: Sequence[Tensor]) -> None:
        """On CPU with numba, the fused compiled path (`_della_fused`), which reads the stored
        inputs: whole rows per chunk, no rows cut."""
        if base is not None and self.reductions:
            self.fused = FusedDella.create(self, base, inputs)
            self.raw_inputs = self.fused is not None

    def reduce(self, step: int, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> None:
        assert base is not None
        length = base.numel()
        if self.fused is not None:
            for index, sparse in enumerate(self.sparse):
                if sparse:
                    self.fused.observe(index, offset, length)
            return
        end = offset + length
        first = -(-offset // self.cols) * self.cols  # start of the first row inside the chunk
        last = end // self.cols * self.cols  # end of the last complete row
        if first >= last:  # no complete row: at most a row's end and the next one's start
            first = last = min(first, end)
        probability = self.params.rescale == "probability"
        for index, x in enumerate(inputs):
            if not self.sparse[index]:
                continue
            magnitudes = (x - base).abs_()
            mask = torch.zeros(length, dtype=torch.float32 if probability else torch.bool,
                               device=base.device)  # fmt: skip
            after = 0.0
            if first < last:
                inner = slice(first - offset, last - offset)
                mask[inner] = self._mask(index, magnitudes[inner], first)
                after = float(magnitudes[inner].double().mul_(mask[inner].double()).sum())
            with self.lock:
                for lo, hi in ((offset, min(first, end)), (max(last, offset), end)):
                    if lo < hi:
                        piece = magnitudes[lo - offset : hi - offset].clone()
                        self.pieces.setdefault((index, lo // self.cols), {})[lo] = (offset, piece)
                self.masks[(index, offset)] = mask
                self.l1[(index, offset)] = (float(magnitudes.double().sum()), after)

    def end_pass(self, step: int) -> None:
        if self.fused is not None:
            for index, sparse in enumerate(self.sparse):
                before, after = self.fused.l1(index)
                l1 = self.params.rescale == "l1"
                if sparse and l1 and before >= L1_FLOOR and after >= L1_FLOOR:
                    self.scales[index] = before / after
            return
        cut_rows = [0.0] * len(self.sources)  # L1 kept in the rows cut by chunks, in row order
        for (index, row), parts in sorted(self.pieces.items()):
            starts = sorted(parts)
            magnitudes = torch.cat([parts[s][1] for s in starts])
            mask = self._mask(index, magnitudes, row * self.cols)
            for start in starts:
                offset, piece = parts[start]
                within = start - row * self.cols
                target = self.masks[(index, offset)]
                target[start - offset : start - offset + piece.numel()] = mask[
                    within : within + piece.numel()
                ]
            cut_rows[index] += float(magnitudes.double().mul_(mask.double()).sum())
        self.pieces.clear()
        if self.params.rescale == "l1":
            for index in range(len(self.sources)):
                sums = [v for (i, _), v in sorted(self.l1.items()) if i == index]
                before = sum(b for b, _ in sums)
                after = sum(a for _, a in sums) + cut_rows[index]
                if self.sparse[index] and before >= L1_FLOOR and after >= L1_FLOOR:
                    self.scales[index] = before / after
        self.l1.clear()

    def apply_into(
        self, base: Tensor | None, inputs: Sequence[Tensor], offset: int, out: Tensor
    ) -> bool:
        assert base is not None
        fused = self.fused
        return fused is not None and fused.apply_into(base, inputs, offset, out, self.scales)

    def apply(self, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> Tensor:
        assert base is not None
        if self.fused is not None:  # raw inputs, as stored
            base, inputs = base.to(self.dtype), [x.to(self.dtype) for x in inputs]
        deltas = []
        for index, x in enumerate(inputs):
            delta = x - base
            if self.sparse[index]:
                if self.fused is not None:
                    mask = self.fused.keep(index, offset, delta.numel())
                else:
                    with self.lock:
                        mask = self.masks.pop((index, offset))
                delta.mul_(mask if mask.dtype == torch.float32 else as_float(mask))
                if self.scales[index] != 1.0:
                    delta.mul_(self.scales[index])
            deltas.append(delta)
        mixed = mix_deltas(deltas, self.sources, self.params, consensus=self.consensus)
        return mixed.mul_(self.params.lambda_).add_(base)


def _kernel(consensus: bool) -> Callable[..., Kernel | None]:
    """Kernels for tensors of at most 2 dimensions; others (ranked along dim 1, as mergekit)
    take the whole-tensor function."""

    def factory(p: Any, s: Sequence[DellaSource], rng: RandomStream, shape: tuple[int, ...]) -> Any:
        return DellaKernel(consensus, p, s, rng, shape) if len(shape) <= 2 else None

    return factory


def _describe(consensus: bool) -> Callable[[Any], str]:
    def semantics(p: Any) -> str:
        text = (
            "MagPrune: per row, keep each δ entry with probability (d − ε) + 2ε·rank/(n − 1) by "
            "its |δ| rank (a PCG64DXSM stream per (seed, tensor name, model, 65,536-element "
            f"block), 16-bit draws); rescale = {p.rescale}. "
        )
        if consensus:
            text += f"Sign election: {p.sign_method} (a tie elects +); zeros never vote. "
        text += (
            f"Normalise: {'yes, by the ' + p.divide_by if p.normalize else 'no'}; λ = {p.lambda_}."
        )
        return text

    return semantics


_VARIANTS: list[tuple[str, bool, type[MethodParams], str]] = [
    ("della", True, DellaParams,
     "θ = θ_base + λ·Σᵢ wᵢ·mᵢ⊙magprune(δᵢ) / Σᵢ wᵢ·mᵢ, mᵢ = [sign agrees]"),
    ("della_linear", False, DellaLinearParams, "θ = θ_base + λ·Σᵢ wᵢ·magprune(δᵢ)"),
]  # fmt: skip
for _name, _consensus, _params, _formula in _VARIANTS:
    register(
        _name,
        params=_params,
        source_params=DellaSource,
        formula=_formula,
        paper="https://arxiv.org/abs/2406.11617",
        randomized=True,
        semantics=_describe(_consensus),
        kernel=_kernel(_consensus),
    )(_family(_consensus))
