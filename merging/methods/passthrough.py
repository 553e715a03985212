"""Passthrough: one source's tensor as it is, optionally scaled (mergekit's ``passthrough``).

Used with ``slices:`` to stack layers of models (frankenmerges, depth up-scaling). mergekit
(``merge_methods/passthrough.py``) refuses more than one tensor and multiplies by the
per-model ``scale`` when one is given; so does this.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from merging.methods._base import MethodParams, SourceParams, register
from merging.methods._kernels import Kernel
from merging.methods._ops import RandomStream


class PassthroughSource(SourceParams):
    scale: float | None = None


class ScaleKernel(Kernel):
    """θ = scale·θ₁ over chunks (scale 1 when none is given)."""

    raw_inputs = True

    def __init__(self, scale: float | None) -> None:
        super().__init__()
        self.scale = 1.0 if scale is None else float(scale)

    def apply(self, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> Tensor:
        if self.scale == 1.0:  # a copy in the stored dtype: the driver casts it once
            return inputs[0]
        # a new tensor: the chunk is a view of the stored input (raw), which other tensors
        # of the plan may be reading at the same time
        return inputs[0].to(self.dtype) * self.scale


@register(
    "passthrough",
    params=MethodParams,
    source_params=PassthroughSource,
    formula="θ = scale·θ₁ (θ₁ unchanged when no scale is given)",
    paper="https://github.com/arcee-ai/mergekit/blob/main/mergekit/merge_methods/passthrough.py",
    needs_base=False,
    min_inputs=1,
    max_inputs=1,
    kernel=lambda p, s, rng, shape: ScaleKernel(s[0].scale),
    semantics=lambda p: "One source per tensor, copied (times its `scale`, when given).",
)
def passthrough(
    base: Tensor | None,
    inputs: Sequence[Tensor],
    sources: Sequence[PassthroughSource],
    params: MethodParams,
    rng: RandomStream,
) -> Tensor:
    """The single input, times its ``scale`` when one is given (mergekit's passthrough)."""
    scale = sources[0].scale
    return inputs[0].clone() if scale is None else inputs[0] * scale
