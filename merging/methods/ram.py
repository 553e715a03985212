"""RAM and RAM+ (Reinforced Agent Merging, arXiv 2601.13572), as mergekit 0.1.5's ``ram`` and
``ramplus_tl`` compute them (``merge_methods/ram.py``).

With task vectors δᵢ = θᵢ − θ_base, an entry of δᵢ *contributes* when |δᵢ| > ε; cᵢ counts, per
element, the models that contribute there. Entries only one model changed are kept whole
(not averaged down by the models that left them alone); entries several changed are averaged
over those models only:

    ram:         θ = θ_base + Σᵢ [|δᵢ| > ε]·δᵢ / max(c, 1)
    ramplus_tl:  θ = θ_base + Σᵢ [|δᵢ| > ε]·δᵢ·(λᵢ·[c = 1] + [c > 1]/c),
                 λᵢ = 1 + r·clamp(ρᵢ, 0, α),  ρᵢ = #shared(i) / max(#unique(i), ε)

where #shared(i) / #unique(i) count model i's contributing entries in this tensor that other
models also change / that only it changes ("tensor-local": counted per tensor). ``ram`` is
elementwise; ``ramplus_tl``'s kernel counts in one reduction pass (exact integer counts).
Per-model weights are not used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from merging.methods import _method_loops
from merging.methods._base import MethodParams, SourceParams, register
from merging.methods._kernels import Kernel
from merging.methods._method_loops import as_array
from merging.methods._ops import RandomStream, as_float, task_vectors


class RamParams(MethodParams):
    epsilon: float = Field(1e-5, ge=0)


class RamPlusParams(RamParams):
    r: float = 0.1
    alpha: float = 0.2


def contributions(deltas: Sequence[Tensor], epsilon: float) -> tuple[list[Tensor], Tensor]:
    """([|δᵢ| > ε] per model, count of contributing models per element)."""
    masks = [d.abs() > epsilon for d in deltas]
    counts = torch.zeros(deltas[0].shape, dtype=torch.int32, device=deltas[0].device)
    for mask in masks:
        counts.add_(mask.view(torch.uint8))
    return masks, counts


def ram_mix(
    deltas: Sequence[Tensor],
    epsilon: float,
    lambdas: Sequence[float] | None,
    known: tuple[list[Tensor], Tensor] | None = None,
) -> Tensor:
    """Σᵢ (zᵢ·[c = 1]·λᵢ + zᵢ·[c > 1] / max(c, 1)), zᵢ = [|δᵢ| > ε]·δᵢ (``ram``: no λ).

    Computed as Σᵢ zᵢ/max(c, 1) (``ram``) or Σᵢ where(c = 1, zᵢ·λᵢ, zᵢ/max(c, 1)): one of the
    two terms of mergekit's sum is always an exact zero, so these round the same (bit-equal).
    ``known``: the `contributions` already computed (masks, counts), else computed here.
    """
    masks, counts = known if known is not None else contributions(deltas, epsilon)
    divisor = counts.clamp_(min=1).float()
    unique = None if lambdas is None else counts == 1
    out = torch.zeros_like(deltas[0])
    for index, (delta, mask) in enumerate(zip(deltas, masks, strict=True)):
        kept = delta * as_float(mask)
        term = kept / divisor
        if unique is not None and lambdas is not None:
            term = torch.where(unique, kept.mul_(lambdas[index]), term)
        out.add_(term)
    return out


def ramplus_lambdas(shared: Sequence[int], unique: Sequence[int], p: RamPlusParams) -> list[float]:
    """λᵢ = 1 + r·clamp(#shared(i) / max(#unique(i), ε), 0, α), in float32 as mergekit."""
    rho = torch.tensor(shared, dtype=torch.float32) / torch.tensor(
        unique, dtype=torch.float32
    ).clamp(min=p.epsilon)
    return [float(x) for x in 1 + p.r * rho.clamp(min=0, max=p.alpha)]


def ramplus_counts(deltas: Sequence[Tensor], epsilon: float) -> tuple[list[int], list[int]]:
    """Per model, (#entries it shares with another model, #entries only it changes)."""
    masks, counts = contributions(deltas, epsilon)
    return contribution_counts(masks, counts)


def contribution_counts(masks: Sequence[Tensor], counts: Tensor) -> tuple[list[int], list[int]]:
    """(#shared, #unique) per model from its mask and the per-element counts: unique entries
    are where the count is 1, shared ones the rest of the model's entries (exact integers)."""
    alone = counts == 1
    unique = [int((m & alone).sum()) for m in masks]
    shared = [int(m.sum()) - u for m, u in zip(masks, unique, strict=True)]
    return shared, unique


def encode(masks: Sequence[Tensor]) -> Tensor:
    """The masks of ≤ 8 models in one byte per element (bit i: model i contributes)."""
    code = masks[0].view(torch.uint8).clone()
    for i, mask in enumerate(masks[1:], start=1):
        code.bitwise_or_(mask.view(torch.uint8) << i)
    return code


def decode(code: Tensor, count: int) -> tuple[list[Tensor], Tensor]:
    """`contributions`' (masks, counts) back from `encode`'s byte per element."""
    bits = [(code >> i) & 1 for i in range(count)]
    counts = bits[0].clone()  # uint8: at most 8, and `ram_mix` only compares and divides by it
    for bit in bits[1:]:
        counts.add_(bit)
    return [bit.view(torch.bool) for bit in bits], counts


@register(
    "ram",
    params=RamParams,
    formula="θ = θ_base + Σᵢ [|δᵢ| > ε]·δᵢ / max(#models with |δ| > ε, 1)",
    paper="https://arxiv.org/abs/2601.13572",
    kernel=lambda p, s, rng, shape: RamKernel(p, len(s), plus=False),
    semantics=lambda p: (
        f"An entry contributes when |δ| > {p.epsilon}; entries one model changed are kept whole, "
        "shared ones averaged over the models that changed them; weights are not used."
    ),
)
def ram(
    base: Tensor | None,
    inputs: Sequence[Tensor],
    sources: Sequence[SourceParams],
    params: RamParams,
    rng: RandomStream,
) -> Tensor:
    """Reinforced Agent Merging: keep unique changes whole, average shared ones."""
    assert base is not None
    deltas = task_vectors(base, inputs)
    return base + ram_mix(deltas, params.epsilon, None)


@register(
    "ramplus_tl",
    params=RamPlusParams,
    formula="θ = θ_base + Σᵢ [|δᵢ| > ε]·δᵢ·(λᵢ·[c = 1] + [c > 1]/c), "
    "λᵢ = 1 + r·clamp(#shared/#unique, 0, α)",
    paper="https://arxiv.org/abs/2601.13572",
    kernel=lambda p, s, rng, shape: RamKernel(p, len(s), plus=True),
    semantics=lambda p: (
        f"As ram (ε = {p.epsilon}), with each model's unique entries scaled by "
        f"λᵢ = 1 + {p.r}·clamp(#shared/#unique, 0, {p.alpha}), counted per tensor; "
        "weights are not used."
    ),
)
def ramplus_tl(
    base: Tensor | None,
    inputs: Sequence[Tensor],
    sources: Sequence[SourceParams],
    params: RamPlusParams,
    rng: RandomStream,
) -> Tensor:
    """RAM+ (tensor-local): RAM with each model's unique entries rescaled by λᵢ."""
    assert base is not None
    deltas = task_vectors(base, inputs)
    lambdas = ramplus_lambdas(*ramplus_counts(deltas, params.epsilon), params)
    return base + ram_mix(deltas, params.epsilon, lambdas)


class RamKernel(Kernel):
    """``ram``: elementwise. ``ramplus_tl``: one pass counting each model's shared and unique
    entries (integers, so the sum is exact in any order), then the output pass.

    On CPU with numba (bf16 or float32 inputs) each pass is one compiled loop per chunk
    (`_jit_ram`) that reads the stored inputs and writes the output dtype itself, with the
    torch path's values bit for bit. Otherwise the torch path's counting pass keeps which models
    contribute to each element (one byte per element, up to 8 models) for the output pass, which
    then mixes without recomputing the masks."""

    def __init__(self, params: RamParams, count: int, *, plus: bool) -> None:
        super().__init__()
        self.params = params
        self.reductions = 1 if plus else 0
        self.shared = [0] * count
        self.unique = [0] * count
        self.plus = plus
        self.lambdas: list[float] | None = None
        self.codes: dict[int, Tensor] = {}  # offset → contributing models, a bit each
        self.fast = False  # the compiled loops (set by `prepare`)

    def prepare(self, base: Tensor | None, inputs: Sequence[Tensor]) -> None:
        assert base is not None
        self.fast = _method_loops.takes([base, *inputs], self.dtype, self.device)
        if self.fast:  # counts and outputs do not depend on the chunking
            self.raw_inputs, self.max_chunk = True, 1 << 22

    def _lambdas(self, count: int) -> np.ndarray:
        return np.asarray(self.lambdas or [1.0] * count, dtype=np.float32)

    def reduce(self, step: int, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> None:
        assert base is not None
        if self.fast:
            shared, unique = np.zeros((2, len(inputs)), dtype=np.int64)
            loops, epsilon = _method_loops.loops("_jit_ram"), np.float32(self.params.epsilon)
            xs = tuple(as_array(x) for x in inputs)
            if len(xs) == 2:  # (the fused two-model loop: the same counts)
                loops.ram_counts2(as_array(base), *xs, epsilon, shared, unique)
            else:
                loops.ram_counts(as_array(base), xs, epsilon, shared, unique)
            with self.lock:
                self.shared = [a + int(b) for a, b in zip(self.shared, shared, strict=True)]
                self.unique = [a + int(b) for a, b in zip(self.unique, unique, strict=True)]
            return
        masks, counts = contributions(task_vectors(base, inputs), self.params.epsilon)
        shared_counts, unique_counts = contribution_counts(masks, counts)
        code = encode(masks) if len(masks) <= 8 else None
        with self.lock:
            self.shared = [a + b for a, b in zip(self.shared, shared_counts, strict=True)]
            self.unique = [a + b for a, b in zip(self.unique, unique_counts, strict=True)]
            if code is not None:
                self.codes[offset] = code

    def end_pass(self, step: int) -> None:
        assert isinstance(self.params, RamPlusParams)
        self.lambdas = ramplus_lambdas(self.shared, self.unique, self.params)

    def _mix_into(self, base: Tensor, inputs: Sequence[Tensor], out: Tensor) -> None:
        loops, xs = _method_loops.loops("_jit_ram"), tuple(as_array(x) for x in inputs)
        args = (np.float32(self.params.epsilon), self.plus, self._lambdas(len(xs)), as_array(out))
        if len(xs) == 2:  # (the fused two-model loop: the same values)
            loops.ram_apply2(as_array(base), *xs, *args)
        else:
            loops.ram_apply(as_array(base), xs, *args)

    def apply_into(
        self, base: Tensor | None, inputs: Sequence[Tensor], offset: int, out: Tensor
    ) -> bool:
        if not self.fast or out.dtype not in _method_loops.STORED or not out.is_contiguous():
            return False
        assert base is not None
        self._mix_into(base, inputs, out)
        return True

    def apply(self, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> Tensor:
        assert base is not None
        if self.fast:
            out = torch.empty(base.numel(), dtype=torch.float32)
            self._mix_into(base, inputs, out)
            return out
        with self.lock:
            code = self.codes.pop(offset, None)
        known = None if code is None else decode(code, len(inputs))
        deltas = task_vectors(base, inputs)
        return ram_mix(deltas, self.params.epsilon, self.lambdas, known).add_(base)
