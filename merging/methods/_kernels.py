"""Chunked kernels: the same methods, computed over flat chunks with per-tensor statistics.

A method's pure function is the reference: it takes whole float32 tensors. For speed and
bounded memory the engine instead feeds a *kernel* flat chunks (a few MB each). A kernel may
first make reduction passes over the chunks to gather what the whole tensor determines — the
TIES trim threshold and the Breadcrumbs band (exact radix selects on the float bit patterns, no
sort; `_select`), DARE's L1 norms, SLERP's norms and angle — and then computes each output
chunk elementwise. Tests check every kernel against its pure function.

The task-vector family (task arithmetic, TIES, DARE, Breadcrumbs) has its own module,
`_family`, with the compiled CPU path.

Kernels are called from several threads at once (one chunk each). Integer histograms are
added under a lock; floating-point partial sums are kept per chunk offset and added in offset
order at the end of the pass, so results never depend on thread timing.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from merging.methods import _compiled


class Kernel:
    """Base kernel: no reductions; subclasses implement `apply`.

    Chunks arrive converted to ``dtype`` (the compute dtype, set by the driver) unless
    ``raw_inputs`` is true: then they come in their stored dtype and the kernel converts what it
    needs (a mixed-dtype ``add_`` reads bf16 directly, saving a float32 copy per input).
    """

    reductions = 0
    raw_inputs = False
    dtype = torch.float32
    device = torch.device("cpu")  # where the chunks are computed (set by the driver)
    max_chunk = 0  # > 0: results do not depend on the chunking; chunks of up to this many
    applied = False  # set by `end_pass` when the reduction passes already wrote the output

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def prepare(self, base: Tensor | None, inputs: Sequence[Tensor]) -> None:
        """See the whole flat tensors (stored dtype) once, before the passes. A kernel may set
        ``reductions`` here, and lower or raise it in `end_pass`: the driver reads it after
        every pass."""

    def reduce(self, step: int, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> None:
        """Observe one chunk during reduction pass ``step``."""

    def reduce_into(
        self, step: int, base: Tensor | None, inputs: Sequence[Tensor], offset: int, out: Tensor
    ) -> bool:
        """Observe a chunk of pass ``step`` as `reduce` does and also write a speculative
        output chunk into ``out`` (as `apply_into` would); or return False and leave the chunk
        to `reduce`. A kernel whose speculation proves right sets ``applied`` in `end_pass`
        (every chunk must have gone through here), and the driver skips the output pass."""
        return False

    def end_pass(self, step: int) -> None:
        """Called after every chunk was seen in reduction pass ``step``."""

    def apply(self, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> Tensor:
        raise NotImplementedError

    def apply_into(
        self, base: Tensor | None, inputs: Sequence[Tensor], offset: int, out: Tensor
    ) -> bool:
        """Write the output chunk straight into ``out`` (the output buffer, in the output
        dtype) with the values `apply` gives, converted as ``copy_`` converts; or return False
        and leave it to `apply`."""
        return False


ELEMENTWISE_CHUNK = 1 << 20  # elementwise kernels: the chunking changes only the calls per tensor
# Sums whose float rounding depends on their order (DARE's L1 norms, SCE's squares, the
# spherical methods' Gram sums) are taken over aligned runs of this many elements — the CPU
# driver's chunk (`merging.streaming.CHUNK`) they were always taken over — and the runs added
# in offset order: the same sums for any chunk size, so such kernels may take bigger chunks.
SUM_PART = 1 << 18


class LinearKernel(Kernel):
    raw_inputs = True
    max_chunk = ELEMENTWISE_CHUNK

    def __init__(self, params: Any, sources: Sequence[Any]) -> None:
        super().__init__()
        self.weights = [s.weight for s in sources]
        total = sum(self.weights)
        self.divisor = total if params.normalize and abs(total) > 1e-8 else 1.0

    def apply_into(
        self, base: Tensor | None, inputs: Sequence[Tensor], offset: int, out: Tensor
    ) -> bool:
        """One compiled loop per chunk on CPU (the same fused multiply-adds as below)."""
        if out.dtype not in _compiled.OUTPUT_DTYPES or not out.is_contiguous():
            return False
        if len({x.dtype for x in inputs}) != 1 or len(inputs) < 2:
            return False
        if not _compiled.wants(inputs[0], inputs[1:], self.dtype):  # torch while they load
            return False
        _compiled.linear_apply(None, inputs, base_scale=1.0, alphas=self.weights,
                               divisor=self.divisor, out=out)  # fmt: skip
        return True

    def apply(self, base: Tensor | None, inputs: Sequence[Tensor], offset: int) -> Tensor:
        out = torch.zeros(inputs[0].shape, dtype=self.dtype, device=inputs[0].device)
        for weight, x in zip(self.weights, inputs, strict=True):
            out.add_(x, alpha=weight)
        return out.div_(self.divisor)
