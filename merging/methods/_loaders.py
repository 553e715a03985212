"""Loading numba loops off the critical path: one background thread for every method's loops.

Importing numba and loading a loop's machine code from its cache (or compiling it, the first
time on a machine) takes a fraction of a second to seconds, holding the GIL most of the time.
Each family of kernels declares its loops once as a `Loops` (the modules, and optionally a
warm-up per kind of chunk: a kind is whatever decides which compiled specialisations a kernel
will call, such as the storage dtypes and the number of inputs). The first ask for a kind
queues it for the one loader thread, which imports the modules (`_numba_start.import_loops`)
and runs the warm-up; `Loops.ready(kind, wait=...)` says whether that kind is loaded, and with
``wait`` blocks until it is (large tensors: worth the wait), else answers no meanwhile (small
tensors take the torch path, with the same results). A load that fails turns that `Loops` off
for the process (the torch path from then on), with one warning.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Hashable, Sequence
from types import ModuleType
from typing import Any

from merging.methods._numba_start import AVAILABLE, import_loops

logger = logging.getLogger(__name__)

_lock = threading.Condition()
_queue: collections.deque[tuple[Loops, Hashable]] = collections.deque()
_worker: threading.Thread | None = None


class Loops:
    """The loop modules of one family of kernels (`import_loops` names) and its warm-up,
    ``warm(kind, *modules)``, run once per kind in the loader thread."""

    def __init__(
        self, names: Sequence[str], warm: Callable[..., None] | None = None, *, label: str = ""
    ) -> None:
        self.names = tuple(names)
        self.warm = warm
        self.label = label or ", ".join(names)
        self.available = AVAILABLE  # False once a load failed
        self.modules: tuple[ModuleType, ...] = ()
        self._ready: set[Hashable] = set()
        self._queued: set[Hashable] = set()

    def ready(self, kind: Hashable = None, *, wait: bool = False) -> bool:
        """Whether the loops for ``kind`` are loaded; the first ask queues them for the loader
        thread, and ``wait`` blocks until they are loaded (or their load failed)."""
        if kind in self._ready:
            return True
        if not self.available:
            return False
        with _lock:
            if kind not in self._ready and kind not in self._queued and self.available:
                self._queued.add(kind)
                _queue.append((self, kind))
                _start_worker()
            while wait and kind in self._queued:
                _lock.wait()
        return kind in self._ready

    def any_ready(self) -> bool:
        """Whether some kind is loaded (so the modules are imported)."""
        return bool(self._ready)

    def _load(self, kind: Hashable) -> None:
        try:
            if not self.modules:
                self.modules = tuple(import_loops(name) for name in self.names)
            if self.warm is not None:
                self.warm(kind, *self.modules)
        except Exception:  # pragma: no cover - a broken numba install: the torch path only
            logger.warning("compiled loops unavailable (%s); using torch", self.label,
                           exc_info=True)  # fmt: skip
            with _lock:
                self.available = False
                self._queued.clear()
                _lock.notify_all()
            return
        with _lock:
            self._ready.add(kind)
            self._queued.discard(kind)
            _lock.notify_all()


def _start_worker() -> None:
    """(Under the lock.) Start the loader thread unless it is running."""
    global _worker
    if _worker is None:
        _worker = threading.Thread(target=_work, name="jit-load", daemon=True)
        _worker.start()


def _work() -> None:
    global _worker
    while True:
        with _lock:
            if not _queue:
                _worker = None
                return
            loops, kind = _queue.popleft()
            if kind not in loops._queued:  # (its family failed meanwhile)
                continue
        loops._load(kind)


def loaded(loops: Loops, kind: Hashable = None) -> tuple[Any, ...]:
    """The modules of ``loops``, loaded now for ``kind`` in this thread's wait (for callers
    that always need them: `Loops.ready` with ``wait``); empty where they cannot load."""
    return loops.modules if loops.ready(kind, wait=True) else ()


__all__ = ["Loops", "loaded"]
