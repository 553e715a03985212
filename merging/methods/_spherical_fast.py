"""The reduction and output passes of NuSLERP, Multi-SLERP, Karcher and NearSwap, in compiled
loops on CPU (numba, `_jit_spherical`) or in torch, with the same results either way.

Both paths read the chunks in their stored dtype (the kernels ask for raw inputs) and compute
what the torch kernels always computed: task vectors x − base in float32, products of two
vectors in float64 (exact), and Σ v₀·c₀ + … with one fused multiply-add per further input.
Sums run in a fixed order:

- ``flat`` (one vector per tensor): element j of a chunk is added into lane j mod 1024, in
  element order; then the lanes are added pairwise, (l₀+l₁, l₂+l₃, …), halving until one is
  left (a loop over a block of 1024 elements is elementwise, and vectorises);
- ``last`` / ``first`` (rows / columns): each vector's elements in element order (as
  ``index_add_`` adds them).

Per-chunk sums are then added in offset order (`VectorSums`). On an accelerator a chunk's
flat sums are torch's ``sum()`` (a loop over lanes would be thousands of tiny kernels). The
compiled loops apply on CPU, float32 compute, inputs of one storage dtype (bf16 or float32;
the base may differ) and contiguous chunks; elsewhere (numba missing, ``HUBMERGE_NO_JIT=1``,
an accelerator) the torch path runs. The loops load in the loader thread (`_loaders`) the
first time they are asked for; large tensors wait for them (`wants`), small ones take the torch
path meanwhile.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from merging.methods import _numba_start
from merging.methods._compiled import STORED as OUTPUT_DTYPES
from merging.methods._compiled import as_array, readable
from merging.methods._loaders import Loops
from merging.methods._vectors import Layout, VectorSums, vector_sums

available = _numba_start.AVAILABLE
LANES = 1024  # (`_jit_spherical.LANES`)
WAIT_FOR_LOOPS = 1 << 20  # elements: from this tensor size on, wait for the loops to load
ALONG = {"flat": 0, "last": 1, "first": 2}
_loops: Any = None  # `_jit_spherical`, once loaded


def _loaded(kind: Any, loops: Any) -> None:
    global _loops
    _loops = loops


LOOPS = Loops(["merging.methods._jit_spherical"], _loaded, label="spherical")


def loaded(*, wait: bool) -> bool:
    """Whether the compiled loops are loaded; the first ask starts loading them in the loader
    thread (`_loaders`; with ``wait``, it waits for them)."""
    return available and LOOPS.ready(wait=wait)


def wants(base: Tensor | None, inputs: Sequence[Tensor], dtype: torch.dtype, *,
          wait: bool) -> bool:  # fmt: skip
    """Whether the compiled loops take these chunks (see the module docstring)."""
    return available and readable(base, inputs, dtype) and loaded(wait=wait)


def _arrays(base: Tensor | None, inputs: Sequence[Tensor]) -> tuple[np.ndarray, tuple[Any, ...]]:
    xs = tuple(as_array(x) for x in inputs)
    return (xs[0] if base is None else as_array(base)), xs


def fold_lanes(lanes: np.ndarray) -> np.ndarray:
    """(stats, 2ᵏ) lane sums → (stats,), added pairwise: (l₀+l₁, l₂+l₃, …), halving (as
    `_jit_spherical.fold`)."""
    while lanes.shape[1] > 1:
        lanes = lanes[:, 0::2] + lanes[:, 1::2]
    return lanes[:, 0]


def _torch_sums(layout: Layout, vectors: Sequence[Tensor], pairs: Sequence[tuple[int, int]],
                offset: int) -> tuple[int, Tensor]:  # fmt: skip
    products = torch.stack([vectors[i] * vectors[j] for i, j in pairs])
    if layout.count > 1 or products.device.type != "cpu":  # (accelerators: torch's sum())
        return vector_sums(layout, list(products), offset)
    lanes = torch.zeros(len(pairs), LANES, dtype=torch.float64, device=products.device)
    for start in range(0, products.shape[1], LANES):  # each lane in element order
        block = products[:, start : start + LANES]
        lanes[:, : block.shape[1]] += block
    return 0, torch.from_numpy(fold_lanes(lanes.cpu().numpy())).unsqueeze(1)


def _flat_sums(reference: np.ndarray, has_base: bool, xs: tuple[Any, ...],
               pairs: tuple[tuple[int, int], ...], part: int) -> np.ndarray:  # fmt: skip
    """(parts, len(pairs)) float64: the sums over each ``part`` elements of the chunk (a
    multiple of LANES, or the chunk's length), each part's lanes folded apart. Two or three
    inputs in one loop over every pair (`gram2`, `gram3`), more in one loop per pair and part
    (`flat_sums`); the same sums either way."""
    length = xs[0].size
    parts = max(1, -(-length // part))
    picks = _every_pair(len(xs), pairs)
    if picks is not None:
        found = np.empty((parts, len(xs) * (len(xs) + 1) // 2), dtype=np.float64)
        loop = _loops.gram2 if len(xs) == 2 else _loops.gram3
        loop(reference if has_base else None, *xs, max(part, 1), found)
        return found[:, picks]
    sums = np.empty((parts, len(pairs)), dtype=np.float64)
    left, right = _pair_arrays(pairs)
    for p in range(parts):
        piece = slice(p * part, (p + 1) * part)
        _loops.flat_sums(reference[piece], has_base, tuple(x[piece] for x in xs), left, right,
                         sums[p])  # fmt: skip
    return sums


@functools.cache
def _every_pair(count: int, pairs: tuple[tuple[int, int], ...]) -> np.ndarray | None:
    """Where each of ``pairs`` is in `gram2` / `gram3`'s order of every pair (i ≤ j); None
    for other numbers of inputs."""
    every = [(i, j) for i in range(count) for j in range(i, count)]
    if count not in (2, 3) or not set(pairs) <= set(every):
        return None
    return np.asarray([every.index(p) for p in pairs], dtype=np.int64)


@functools.cache
def _pair_arrays(pairs: tuple[tuple[int, int], ...]) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray([i for i, _ in pairs], dtype=np.int64),
            np.asarray([j for _, j in pairs], dtype=np.int64))  # fmt: skip


def chunk_sums(
    layout: Layout, base: Tensor | None, inputs: Sequence[Tensor],
    pairs: Sequence[tuple[int, int]], offset: int, *, dtype: torch.dtype, wait: bool,
) -> tuple[int, Tensor]:  # fmt: skip
    """(first vector, float64 (len(pairs), vectors) sums of vᵢ·vⱼ per vector) for one chunk,
    added in the order the module docstring states; vᵢ = inputs[i] [− base] in ``dtype``.
    Rows and columns only for two inputs and the pairs (0, 0), (1, 1), (0, 1) (NuSLERP's)."""
    length = inputs[0].numel()
    if not wants(base, inputs, dtype, wait=wait):
        vectors = [x.to(dtype) for x in inputs]
        if base is not None:
            widened = base.to(dtype)
            vectors = [v - widened for v in vectors]
        return _torch_sums(layout, [v.double() for v in vectors], pairs, offset)
    reference, xs = _arrays(base, inputs)
    if layout.count == 1:
        sums = _flat_sums(reference, base is not None, xs, tuple(pairs), length)
        return 0, torch.from_numpy(sums.T.copy())
    assert list(pairs) == [(0, 0), (1, 1), (0, 1)]
    assert len(xs) == 2
    first, count = layout.span(offset, length)
    sums = np.zeros((3, count), dtype=np.float64)
    _loops.pair_sums(reference, base is not None, xs[0], xs[1], ALONG[layout.along], layout.size,
                     layout.count, offset, first, sums)  # fmt: skip
    return first, torch.from_numpy(sums)


def flat_parts(
    base: Tensor | None, inputs: Sequence[Tensor], pairs: Sequence[tuple[int, int]],
    offset: int, part: int, *, dtype: torch.dtype, wait: bool,
) -> list[tuple[int, tuple[int, Tensor]]]:  # fmt: skip
    """`chunk_sums` of one flat vector per tensor for each ``part`` elements of the chunk at
    ``offset`` apart ((its offset, (0, (len(pairs), 1) sums)) per part): the sums a chunking
    into parts would give, from one call (``part``: a multiple of LANES)."""
    length = inputs[0].numel()
    if not wants(base, inputs, dtype, wait=wait):
        flat = Layout((length,), "flat")
        return [(offset + start, chunk_sums(
            flat, None if base is None else base[start : start + part],
            [x[start : start + part] for x in inputs], pairs, offset + start, dtype=dtype,
            wait=wait))
            for start in range(0, length, part)]  # fmt: skip
    reference, xs = _arrays(base, inputs)
    sums = torch.from_numpy(_flat_sums(reference, base is not None, xs, tuple(pairs), part))
    return [(offset + p * part, (0, sums[p].unsqueeze(1))) for p in range(sums.shape[0])]


class ChunkSums(VectorSums):
    """`VectorSums` fed with per-chunk sums computed elsewhere (`chunk_sums`)."""

    def put(self, offset: int, part: tuple[int, Tensor]) -> None:
        with self.lock:
            self.parts[offset] = part

    def put_all(self, parts: Sequence[tuple[int, tuple[int, Tensor]]]) -> None:
        with self.lock:
            self.parts.update(parts)


def combine_into(
    layout: Layout, base: Tensor | None, inputs: Sequence[Tensor], coefficients: Tensor,
    offset: int, out: Tensor, *, dtype: torch.dtype, wait: bool,
) -> bool:  # fmt: skip
    """out = [base +] Σₘ cₘ·vₘ (vₘ = inputs[m] [− base]; cₘ = coefficients[m, the element's
    vector], float32 (inputs, vectors)) in the compiled loop, straight into ``out``; False
    where the loop does not apply (the caller computes it in torch: the same values)."""
    if out.dtype not in OUTPUT_DTYPES or not out.is_contiguous():
        return False
    if not wants(base, inputs, dtype, wait=wait):
        return False
    reference, xs = _arrays(base, inputs)
    table = coefficients.to(torch.float32).t().contiguous().numpy()  # (vectors, inputs)
    if layout.count == 1:
        _loops.combine_flat(reference, base is not None, xs, table[0], as_array(out))
    elif layout.along == "last":
        _loops.combine_rows(reference, base is not None, xs, table, layout.size, offset,
                            as_array(out))  # fmt: skip
    else:
        _loops.combine_columns(reference, base is not None, xs, table, offset, as_array(out))
    return True


def near_swap_into(t: float, a: Tensor, b: Tensor, out: Tensor, *, dtype: torch.dtype,
                   wait: bool) -> bool:  # fmt: skip
    """NearSwap of one chunk in the compiled loop, straight into ``out``; False where it does
    not apply."""
    if out.dtype not in OUTPUT_DTYPES or not out.is_contiguous():
        return False
    if not wants(a, [b], dtype, wait=wait):
        return False
    _loops.near_swap(as_array(a), as_array(b), np.float32(t), as_array(out))
    return True


def warm_up() -> None:
    """Load (or compile) the loops for bf16 and float32 checkpoints of two and three inputs."""
    if not loaded(wait=True):
        return
    for storage in OUTPUT_DTYPES:
        base = torch.zeros(16, dtype=storage)
        out = torch.empty(16, dtype=storage)
        for models in (2, 3):
            inputs = [torch.zeros(16, dtype=storage) for _ in range(models)]
            pairs = [(i, j) for i in range(models) for j in range(i, models)]
            flat = Layout((16,), "flat")
            table = torch.zeros(models, 1)
            for b in (None, base):
                chunk_sums(flat, b, inputs, pairs, 0, dtype=torch.float32, wait=True)
                combine_into(flat, b, inputs, table, 0, out, dtype=torch.float32, wait=True)
        near_swap_into(0.1, base, base, out, dtype=torch.float32, wait=True)
        for along in ("last", "first"):
            layout = Layout((4, 4), along)
            pair = [torch.zeros(16, dtype=storage) for _ in range(2)]
            chunk_sums(layout, None, pair, [(0, 0), (1, 1), (0, 1)], 0, dtype=torch.float32,
                       wait=True)  # fmt: skip
            combine_into(layout, None, pair, torch.zeros(2, 4), 0, out, dtype=torch.float32,
                         wait=True)  # fmt: skip
