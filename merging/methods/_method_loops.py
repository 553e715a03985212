"""Lazy access to the compiled loops of single methods (`_jit_ram`, `_jit_sce`).

`loops` answers the loop module for a kernel's chunks, or ``None`` where the torch path runs
instead: numba missing or ``HUBMERGE_NO_JIT=1`` (as for `_compiled`), a chunk off the CPU, a
compute dtype other than float32, or stored inputs that are neither bf16 nor float32. The
module is loaded the first time a kernel asks, by the loader thread (`_loaders`; importing
numba and loading the cached machine code takes a second or so; ``python -m
merging.warm_loops`` compiles it ahead of time), and the asking kernel waits for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from merging.methods import _compiled
from merging.methods._compiled import STORED, as_array
from merging.methods._loaders import Loops, loaded

__all__ = ["MODULES", "STORED", "as_array", "loops", "takes", "warm_up"]


def takes(tensors: Sequence[Tensor], dtype: torch.dtype, device: torch.device) -> bool:
    """Whether compiled loops can read these whole flat tensors (CPU, contiguous, bf16 or
    float32, the inputs in one dtype) for float32 compute on ``device`` (the chunks')."""
    return (
        _compiled.available
        and device.type == "cpu"
        and _compiled.readable(tensors[0], tensors[1:], dtype)
    )


_families: dict[str, Loops] = {}


def loops(name: str) -> Any:
    """The loop module ``merging.methods.<name>``, loaded (waiting for the loader thread).

    Raises:
        RuntimeError: the loops cannot load here (a broken numba install; logged once).
    """
    family = _families.get(name)
    if family is None:
        family = _families.setdefault(name, Loops([f"merging.methods.{name}"]))
    modules = loaded(family)
    if not modules:
        raise RuntimeError(f"compiled loops merging.methods.{name} cannot load")
    return modules[0]


MODULES = ("_jit_ram", "_jit_sce", "_jit_fusion")


def warm_up() -> None:
    """Compile (or load from numba's cache) every module's loops (`merging.warm_loops`)."""
    for name in MODULES:
        loops(name).warm_up()
