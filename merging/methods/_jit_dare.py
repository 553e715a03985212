# mypy: disable-error-code="call-arg"
"""The numba loop behind DARE's compiled reduction pass (`_compiled.dare_observe`): the
chunk's keep-mask, |δ| and the mask as 0/1 floats in one call, for torch's own sum and dot.

Like `_jit_loops` (whose generator and element helpers it uses), imported lazily.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from merging.methods._jit_loops import _jit, _value, keep_mask


@_jit
def dare_observe(
    states: Any, incs: Any, start: int, threshold: int, base: Any, x: Any, keep: Any,
    magnitudes: Any, kept: Any,
) -> None:  # fmt: skip
    """keep: the mask bytes (`keep_mask`); magnitudes = |x − base|; kept = keep as 0.0 / 1.0."""
    keep_mask(states, incs, start, threshold, keep)
    one, zero = np.float32(1.0), np.float32(0.0)
    for j in range(keep.size):
        magnitudes[j] = abs(_value(x, j) - _value(base, j))
        kept[j] = one if keep[j] != 0 else zero
