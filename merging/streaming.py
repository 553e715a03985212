"""The streaming machinery under the engine: read-ahead, tensors in flight, chunked kernels.

Reader threads fault the next tensors' pages in; up to two tensors are computed at once while
the finished one is written; each tensor's kernel runs over flat chunks spread over a thread
pool (torch single-threaded per op on CPU).
"""

from __future__ import annotations

import functools
import queue
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from merging.io.headers import SAFETENSORS_TO_TORCH, TensorHeader


class Prefetcher:
    """Reads tensors ahead of the consumer in a small thread pool."""

    def __init__(self, names: list[str], load: Callable[[str], Any], workers: int, depth: int):
        self._names = deque(names)
        self._load = load
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="read")
        self._pending: deque[Future[Any]] = deque()
        for _ in range(max(1, workers * depth)):
            self._submit()

    def _submit(self) -> None:
        if self._names:
            self._pending.append(self._pool.submit(self._load, self._names.popleft()))

    def next(self) -> Any:
        result = self._pending.popleft().result()
        self._submit()
        return result

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)


class Pipeline:
    """Tensors in flight: up to ``in_flight`` are computed at once (their chunks share the
    compute pool, so one tensor's reduction barrier never leaves a core idle) while the caller
    writes finished ones, oldest first. Each computing tensor owns one of ``in_flight + 1``
    reusable output buffers, so no buffer is overwritten while it is being written and no
    tensor-sized memory is allocated per tensor.
    """

    def __init__(self, context: Any, numel: int, dtype: torch.dtype, *, in_flight: int) -> None:
        self.context = context
        self.dtype = dtype
        self.in_flight = in_flight
        self.free: queue.SimpleQueue[torch.Tensor] = queue.SimpleQueue()
        for _ in range(in_flight + 1):
            self.free.put(torch.empty(numel, dtype=dtype))
        self.pool = ThreadPoolExecutor(in_flight, thread_name_prefix="tensor")
        self.pending: deque[Future[tuple[TensorHeader, torch.Tensor, torch.Tensor]]] = deque()
        self.current: torch.Tensor | None = None

    def _compute(
        self, header: TensorHeader, tensors: list[torch.Tensor]
    ) -> tuple[TensorHeader, torch.Tensor, torch.Tensor]:
        buffer = self.free.get()
        result = self.context.merge(header, tensors, buffer)
        return header, result.to(SAFETENSORS_TO_TORCH[header.dtype]), buffer

    def submit(self, header: TensorHeader, tensors: list[torch.Tensor]) -> None:
        self.pending.append(self.pool.submit(self._compute, header, tensors))

    def full(self) -> bool:
        return len(self.pending) > self.in_flight

    def __len__(self) -> int:
        return len(self.pending)

    def oldest(self) -> tuple[TensorHeader, torch.Tensor]:
        header, result, self.current = self.pending.popleft().result()
        return header, result

    def recycle(self) -> None:
        if self.current is not None:
            self.free.put(self.current)
            self.current = None

    def close(self) -> None:
        for future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True)


def release_tensor(source: Any, name: str) -> None:
    release = getattr(source, "release", None)
    if release is not None:
        release(name)


def expect_reads(source: Any, names: list[str]) -> None:
    expect = getattr(source, "expect", None)
    if expect is not None:
        expect(names)


def touch_pages(tensor: torch.Tensor, page: int = 4096) -> None:
    """Fault a memory-mapped tensor's pages in (one byte per page), so that reader threads,
    not the compute thread, wait for the disk."""
    if tensor.numel() and tensor.is_contiguous():
        flat = tensor.reshape(-1).view(torch.uint8)
        flat[::page].sum()


CHUNK = 1 << 18  # elements per chunk: 1 MB of float32, a multiple of the RNG block
# On an accelerator each chunk is a host→device copy and a few kernel launches: bigger chunks
# (16 MB of float32) amortise that; on CPU small chunks stay in cache and share the cores.
ACCELERATOR_CHUNK = 1 << 22


def chunk_size(device: torch.device) -> int:
    return CHUNK if device.type == "cpu" else ACCELERATOR_CHUNK


def run_kernel(
    kernel: Any,
    flats: list[torch.Tensor],
    out: torch.Tensor,
    *,
    has_base: bool,
    device: torch.device,
    dtype: torch.dtype,
    chunk: int = CHUNK,
    pool: ThreadPoolExecutor | None = None,
) -> None:
    """Drive a kernel over flat inputs: `prepare` with the whole inputs, its reduction passes
    (as many as ``kernel.reductions`` says after each), then the output pass into ``out``
    unless a reduction pass already wrote it (``kernel.applied``: `Kernel.reduce_into`).

    With a ``pool``, chunks are computed in its threads (each chunk on one core: on CPU the
    engine runs torch single-threaded per op and parallelises across chunks instead).
    """
    numel = out.numel()
    kernel.dtype, kernel.device = dtype, device
    if has_base:
        kernel.prepare(flats[0], flats[1:])
    else:
        kernel.prepare(None, flats)
    # a kernel whose results do not depend on the chunking may ask for bigger chunks
    chunk = max(chunk, min(kernel.max_chunk, numel // 8 // CHUNK * CHUNK))
    offsets = range(0, numel, chunk)
    convert = None if kernel.raw_inputs else dtype
    same = device.type == "cpu" and convert is None

    def parts(offset: int) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        if same:  # stored CPU inputs: views, no conversion call per chunk
            chunks = [x[offset : offset + chunk] for x in flats]
        else:
            chunks = [x[offset : offset + chunk].to(device=device, dtype=convert) for x in flats]
        return (chunks[0], chunks[1:]) if has_base else (None, chunks)

    def reduce(step: int, offset: int) -> None:
        base, inputs = parts(offset)
        if not kernel.reduce_into(step, base, inputs, offset, out[offset : offset + chunk]):
            kernel.reduce(step, base, inputs, offset)

    def apply(offset: int) -> None:
        base, inputs = parts(offset)
        target = out[offset : offset + chunk]
        if not kernel.apply_into(base, inputs, offset, target):
            result = kernel.apply(base, inputs, offset)
            target[: result.numel()].copy_(result)

    def each(fn: Callable[[int], None]) -> None:
        if pool is None or len(offsets) == 1:
            for offset in offsets:
                fn(offset)
        else:
            for future in [pool.submit(fn, offset) for offset in offsets]:
                future.result()

    step = 0
    while step < kernel.reductions:  # a kernel may change how many passes it needs
        each(functools.partial(reduce, step))
        kernel.end_pass(step)
        step += 1
    if not kernel.applied:  # (a kernel's speculative output may already be in place)
        each(apply)
