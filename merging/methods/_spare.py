"""Scratch buffers reused from chunk to chunk and tensor to tensor while merges run.

A page the process has not touched before costs a page fault and a zeroing the first time it
is written, and on a VM whose guest hands freed memory back to its host (as the 2-core VM of
the README's figures does, ~2 s after it is freed) a host fault on top: ~1 µs per 4 KiB page
there. glibc maps every allocation above 32 MiB afresh and unmaps it when freed, so a kernel
that allocates tensor-sized scratch for every tensor pays that for every byte of each large
tensor: DELLA's keep masks (one byte per element and model) are above that size for most
tensors of a 70B model (a 8192 × 28672 projection: 235 MB a model). At 1B only the embeddings
and the LM head are (~30,000 of a DELLA merge's ~210,000 page faults, ~0.2 CPU s, which the
merge's wall time does not show against its noise). Kernels take such buffers from a
`SparePool` instead and hand them back when their tensor is done. DARE's chunk masks (a
megabyte each, mostly one size) are recycled by size (`mask_buffer`, `release_masks`).
`release_all` (the engine, when a merge ends) drops what both keep, so an idle server holds
none, and a server merging many shapes does not keep a list for every chunk size it saw.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np


class SparePool:
    """Up to ``kept`` spare 1-D buffers of one dtype; `take` hands out the smallest that fits."""

    def __init__(self, dtype: Any, kept: int) -> None:
        self.dtype = np.dtype(dtype)
        self.kept = kept
        self._spare: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, length: int, owned: list[np.ndarray]) -> np.ndarray:
        """A buffer of ``length`` elements (uninitialised): the first ``length`` of the
        smallest spare one that fits, or a new one. Its whole buffer is appended to ``owned``,
        the list `give` takes back."""
        with self._lock:
            fits = [i for i, b in enumerate(self._spare) if b.size >= length]
            whole = self._spare.pop(min(fits, key=lambda i: self._spare[i].size)) if fits else None
        if whole is None:
            whole = np.empty(length, self.dtype)
        owned.append(whole)
        return whole[:length]

    def give(self, owned: list[np.ndarray]) -> None:
        """Take back buffers `take` handed out (nothing may read or write them any more); the
        largest ``kept`` of all the spare ones stay."""
        with self._lock:
            self._spare.extend(owned)
            self._spare.sort(key=lambda b: b.size, reverse=True)
            del self._spare[self.kept :]
        owned.clear()

    def give_when_gone(self, holder: object, owned: list[np.ndarray]) -> None:
        """`give` ``owned`` back once ``holder`` (the only object that refers to those buffers)
        has been collected."""
        weakref.finalize(holder, self.give, owned)

    def release(self) -> None:
        """Drop every spare buffer (those in use come back later, and are kept again)."""
        with self._lock:
            self._spare.clear()

    def spare_bytes(self) -> int:
        with self._lock:
            return sum(b.nbytes for b in self._spare)


# DELLA's keep masks. Two tensors are in flight at once, each with a mask per model; four
# spare ones at most, so the masks never hold more than twice what those tensors need.
MASKS = SparePool(np.bool_, kept=4)

_chunk_lock = threading.Lock()
_free_masks: dict[int, list[np.ndarray]] = {}
KEPT_MASKS = 64  # recycled mask buffers per size (DARE's chunks: mostly one size, 1 MB each)


def mask_buffer(length: int) -> np.ndarray:
    """A bool buffer for a DARE keep-mask, recycled (`release_masks`): a fresh megabyte is
    faulted in and zeroed by the kernel page by page, a reused one is not."""
    with _chunk_lock:
        free = _free_masks.get(length)
        if free:
            return free.pop()
    return np.empty(length, dtype=np.bool_)


def release_masks(masks: Sequence[np.ndarray | None]) -> None:
    """Hand masks back for reuse once nothing reads them any more."""
    with _chunk_lock:
        for mask in masks:
            if mask is not None and mask.dtype == np.bool_ and mask.ndim == 1:
                free = _free_masks.setdefault(mask.size, [])
                if len(free) < KEPT_MASKS:
                    free.append(mask)


def release_all() -> None:
    """Drop every spare buffer: DELLA's whole-tensor masks and DARE's chunk masks (called when
    a merge ends)."""
    MASKS.release()
    with _chunk_lock:
        _free_masks.clear()
