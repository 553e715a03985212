"""DELLA's keep masks through a compiled loop (numba), with the torch path's exact results.

`keep_mask` answers ``None`` where it does not apply — numba missing or ``HUBMERGE_NO_JIT=1``
(as for `_compiled`), a chunk off the CPU, magnitudes that are not contiguous float32, or a
row longer than 2³¹ — and DELLA then ranks with its torch / NumPy path. The loop
(`_jit_della`) is loaded by the loader thread (`_loaders`) the first time a mask is asked for,
and the asking kernel waits for it (importing numba and loading the cached machine code takes
a second or so); the thresholds it compares against are computed by
torch from the ranks 0…n−1, so each element is kept exactly when the torch path keeps it.
tests/merging/test_methods_della.py compares the two bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from merging.methods._loaders import Loops, loaded
from merging.methods._numba_start import AVAILABLE

available = AVAILABLE
LOOPS = Loops(["merging.methods._jit_della"], label="DELLA's ranking")


def keep_mask(
    magnitudes: Tensor, draw: Tensor, thresholds: Callable[[int], Tensor]
) -> Tensor | None:
    """The keep mask (bool, the shape of ``magnitudes``) of rows of non-negative magnitudes:
    element j of a row is kept when ``draw[j] < thresholds(n)[rank_j]`` (rank_j its stable rank
    in the row by magnitude); or ``None`` where the compiled loop does not apply.

    Args:
        magnitudes: float32 (rows, n), non-negative (``abs`` of the task vector).
        draw: the 16-bit draws as int32, the same shape.
        thresholds: n → int32 tensor of the n thresholds, non-decreasing in the rank.
    """
    if (
        not available
        or magnitudes.device.type != "cpu"
        or magnitudes.dtype != torch.float32
        or magnitudes.dim() != 2
        or magnitudes.shape[1] >= 2**31
        or magnitudes.numel() == 0
    ):
        return None
    modules = loaded(LOOPS)  # (waits for the loader thread)
    if not modules:
        return None
    rows = magnitudes.contiguous()
    keys = rows.view(torch.int32).numpy().view(np.uint32)
    draws = draw.to(torch.int32).reshape(rows.shape).contiguous().numpy()
    table = thresholds(rows.shape[1]).to(torch.int32).contiguous().numpy()
    out = np.empty(rows.shape, dtype=np.bool_)
    loops = modules[0]
    loops.keep_rows(keys, draws, table, out, loops.scratch(rows.shape[1]))
    return torch.from_numpy(out)


__all__ = ["available", "keep_mask"]
