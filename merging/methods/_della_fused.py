"""DELLA's kernel as fused compiled loops on CPU (numba), with the torch kernel's masks.

`FusedDella.create` takes a DELLA kernel's tensor when the loops apply — numba there (and no
``HUBMERGE_NO_JIT``), CPU, bf16 or float32 inputs, a 2-D or 1-D tensor, and the ``l1`` or
``none`` rescale — and answers ``None`` otherwise (the torch path runs). Each chunk of the
reduction pass handles the whole rows that *start* in it, reading them from the stored
tensors (a row may run past the chunk's end), so no row is ever cut: draws, |δ|, the ranked
keep mask and the L1 norms of a row come from one loop (`_jit_della_rows.observe_rows`), and
the masks go into one flat byte mask per model (buffers reused from tensor to tensor,
`_spare`); the generator states of a model's mask blocks
are seeded for the whole tensor at its first chunk (`_streams`). The output pass is TIES's
compiled masked loop (`_compiled.family_apply`) for ``della`` and
`_jit_della_rows.linear_apply` for ``della_linear``, both writing the output dtype into the
output buffer.

The masks are the torch path's, bit for bit (the same draws and the same stable ranks), and
every output value is rounded as the torch kernel rounds it. The L1 norms are float64 sums
grouped by row rather than by chunk: they may differ from the torch path's in the last bits of
a float64, which changes the float32 rescale factor only where the ratio lies within ~10⁻¹³ of
a float32 rounding boundary (never seen in tests or benchmarks).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from merging.methods import _compiled, _della_fast, _spare
from merging.methods._loaders import Loops
from merging.methods._ops import BLOCK, RandomStream
from merging.methods._streams import block_streams

WAIT_FOR_LOOPS = 1 << 20  # elements: from this tensor size on, wait for the compiled loops
_scratch = threading.local()


LOOPS = Loops(
    [f"merging.methods.{name}" for name in ("_jit_della_rows", "_jit_della", "_jit_dare")],
    label="DELLA",
)


def _modules() -> tuple[Any, ...]:
    """The row loops, DELLA's ranking loops and DARE's stream seeding (loaded: `create`)."""
    return LOOPS.modules


class DellaKeys:
    """The block seeds of DELLA's draws (`della.draws`), shaped for `block_streams`."""

    def __init__(self, rng: RandomStream) -> None:
        self.rng = rng

    def block_digest(self, source: int, block: int) -> bytes:
        key = f"della\x00{self.rng.seed}\x00{self.rng.tensor_name}\x00{source}\x00{block}"
        return hashlib.sha256(key.encode()).digest()[:16]

    def block_seed(self, source: int, block: int) -> int:
        return int.from_bytes(self.block_digest(source, block), "little")


def _work(cols: int, blocks: int) -> tuple[np.ndarray, np.ndarray, tuple[Any, ...]]:
    """This thread's buffers: raw draws for ``blocks`` blocks, one row's keys, rank scratch."""
    held = getattr(_scratch, "held", None)
    if held is None or held[0].size < blocks * BLOCK // 4 or held[1].size < cols:
        size = max(blocks * BLOCK // 4, 0 if held is None else held[0].size)
        width = max(cols, 0 if held is None else held[1].size)
        held = _scratch.held = (np.empty(size, np.uint64), np.empty(width, np.uint32),
                                _modules()[1].scratch(width))  # fmt: skip
    return held


class FusedDella:
    """The compiled path of one DELLA kernel's tensor (see the module docstring)."""

    def __init__(self, kernel: Any, base: Tensor, inputs: Sequence[Tensor]) -> None:
        # (no reference to the kernel: a cycle would keep the masks until the next collection)
        self.lock = kernel.lock
        self.consensus, self.params, self.sources = kernel.consensus, kernel.params, kernel.sources
        self.base = _compiled.as_array(base)
        self.inputs = [_compiled.as_array(x) for x in inputs]
        self.numel = base.numel()
        self.cols = kernel.cols
        self.keys = DellaKeys(kernel.rng)
        owned: list[np.ndarray] = []  # (reused buffers: fresh pages fault in, `_spare`)
        self.masks = [_spare.MASKS.take(self.numel, owned) if s else None for s in kernel.sparse]
        _spare.MASKS.give_when_gone(self, owned)
        self.tables = [
            None if not s else kernel._thresholds(i)(self.cols).to(torch.int32).numpy()
            for i, s in enumerate(kernel.sparse)
        ]
        self.sums: dict[tuple[int, int], tuple[float, float]] = {}
        self.streams: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.streams_lock = threading.Lock()

    @classmethod
    def create(cls, kernel: Any, base: Tensor, inputs: Sequence[Tensor]) -> FusedDella | None:
        if (
            not _della_fast.available
            or kernel.params.rescale == "probability"
            or base.numel() == 0
            or kernel.cols >= 2**31
            or kernel.device.type != "cpu"
            or base.dim() != 1
        ):
            return None
        wait = base.numel() >= WAIT_FOR_LOOPS
        if not _compiled.wants(base, inputs, kernel.dtype, wait=wait):
            return None
        if not LOOPS.ready(wait=wait):  # (small tensors: the torch path while they load)
            return None
        return cls(kernel, base, inputs)

    def observe(self, index: int, offset: int, length: int) -> None:
        """The reduction step of model ``index`` for the rows that start in this chunk."""
        cols = self.cols
        first = -(-offset // cols)
        last = min(-(-(offset + length) // cols), self.numel // cols)
        if first >= last:
            return
        start, stop = first * cols, last * cols
        rows = _modules()[0]
        states, incs = self._streams(index, start // BLOCK, (stop - 1) // BLOCK + 1)
        raws, keys, work = _work(cols, states.shape[0])
        mask = self.masks[index]
        assert mask is not None
        before, after = rows.observe_rows(
            self.base[start:stop], self.inputs[index][start:stop], cols, states, incs,
            start - start // BLOCK * BLOCK, self.tables[index], mask[start:stop], raws, keys, work,
        )  # fmt: skip
        with self.lock:
            self.sums[(index, offset)] = (before, after)

    def _streams(self, index: int, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """The generator states and increments of model ``index``'s mask blocks [first, last):
        every block of the tensor seeded in one call the first time (~25 µs of Python a call
        per chunk otherwise, ~2 µs a block)."""
        with self.streams_lock:
            if index not in self.streams:
                seeder = _modules()[2].seed_streams
                self.streams[index] = block_streams(self.keys, index, 0, self.numel, seeder)
            states, incs = self.streams[index]
        return states[first:last], incs[first:last]

    def l1(self, index: int) -> tuple[float, float]:
        """Model ``index``'s L1 norms before and after its mask (chunk sums in offset order)."""
        parts = [v for (i, _), v in sorted(self.sums.items()) if i == index]
        return sum(b for b, _ in parts), sum(a for _, a in parts)

    def keep(self, index: int, offset: int, length: int) -> Tensor:
        mask = self.masks[index]
        assert mask is not None  # (a copy: the mask's buffer is reused once this is gone)
        return torch.from_numpy(mask[offset : offset + length].copy())

    def apply_into(
        self, base: Tensor, inputs: Sequence[Tensor], offset: int, out: Tensor,
        scales: Sequence[float],
    ) -> bool:  # fmt: skip
        """The output chunk into ``out`` (bf16 or float32) with each model's L1 rescale
        ``scales``, or False (the torch `apply`)."""
        if out.dtype not in _compiled.OUTPUT_DTYPES or not out.is_contiguous():
            return False
        length = base.numel()
        keeps = [None if m is None else m[offset : offset + length] for m in self.masks]
        weights = [s.weight for s in self.sources]
        params = self.params
        if self.consensus:
            by_weight = params.divide_by == "weights"
            _compiled.family_apply(
                base, inputs,
                modes=[_compiled.DENSE if k is None else _compiled.MASK for k in keeps],
                thresholds=[0.0] * len(keeps), keeps=keeps,
                rescales=[_compiled.RESCALE_MUL] * len(keeps), scales=scales, weights=weights,
                divisor_weights=weights if by_weight else [1.0] * len(weights),
                sign_method=params.sign_method, normalize=params.normalize,
                lambda_=params.lambda_, out=out,
            )  # fmt: skip
            return True
        total = float(sum(weights)) if params.divide_by == "weights" else float(len(weights))
        empty = np.zeros(0, np.bool_)
        _modules()[0].linear_apply(
            _compiled.as_array(base), tuple(_compiled.as_array(x) for x in inputs),
            tuple(empty if k is None else k for k in keeps),
            np.asarray([k is not None for k in keeps], np.bool_),
            np.asarray(scales, np.float32), np.asarray(weights, np.float32),
            np.float32(1.0 if abs(total) < 1e-8 else total), bool(params.normalize),
            np.float32(params.lambda_), _compiled.as_array(out),
        )  # fmt: skip
        return True
