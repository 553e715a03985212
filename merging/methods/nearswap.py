"""NearSwap: take the other model's value where it is near the base's, keep the base elsewhere.

mergekit 0.1.5's ``nearswap`` (``merge_methods/nearswap.py``), first used for
alchemonaut/QuartetAnemoi-70B-t0.0001. Per element, with a = θ_base and b = θ₁:

    w = clamp(t / max(|a − b|, 1e-6), 0, 1);  θ = w·b + (1 − w)·a

so elements that differ by at most ``t`` are swapped for the other model's, and the further
apart they are the more of the base is kept. Elementwise: the kernel needs no reductions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from merging.methods import _spherical_fast as fast
from merging.methods._base import MethodParams, SourceParams, register
from merging.methods._kernels import Kernel
from merging.methods._ops import RandomStream

DIFF_FLOOR = 1e-6


class NearSwapParams(MethodParams):
    t: float


def near_swap(t: float, a: Tensor, b: Tensor) -> Tensor:
    """w·b + (1 − w)·a with w = clamp(t / max(|a − b|, 1e-6), 0, 1), elementwise."""
    weight = (t / (a - b).abs_().clamp_(min=DIFF_FLOOR)).clamp_(0, 1)
    return (weight * b).add_((1 - weight).mul_(a))  # mergekit's expression, same rounding


class NearSwapKernel(Kernel):
    """`near_swap` per chunk: in a compiled loop on CPU straight into the output
    (`_spherical_fast.near_swap_into`: the same operations, the same values), else in torch."""

    raw_inputs = True  # bf16 chunks are read as they are stored

    def __init__(self, params: NearSwapParams, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.t = params.t
        self.wait = math.prod(shape) >= fast.WAIT_FOR_LOOPS

    def apply_into(
        self, base: Tensor | None, inputs: Sequence[Tensor], offset: int, out: Tensor
    ) -> bool:
        assert base is not None
        return fast.near_swap_into(self.t, base, inputs[0], out, dtype=self.dtype,
                                   wait=self.wait)  # fmt: skip

    def apply(self, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> Tensor:
        assert base is not None
        return near_swap(self.t, base.to(self.dtype), inputs[0].to(self.dtype))


@register(
    "nearswap",
    params=NearSwapParams,
    formula="θ = w·θ₁ + (1 − w)·θ_base, w = clamp(t / |θ_base − θ₁|, 0, 1) per element",
    paper="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
    min_inputs=1,
    max_inputs=1,
    kernel=lambda p, s, rng, shape: NearSwapKernel(p, shape),
    semantics=lambda p: (
        f"Elements within t = {p.t} of the base take the other model's value; further apart, "
        "the weight of the other model falls as t/|difference| (difference floored at 1e-6)."
    ),
)
def nearswap(
    base: Tensor | None,
    inputs: Sequence[Tensor],
    sources: Sequence[SourceParams],
    params: NearSwapParams,
    rng: RandomStream,
) -> Tensor:
    """NearSwap of the base and one other model: `near_swap` elementwise."""
    assert base is not None
    return near_swap(params.t, base, inputs[0])
