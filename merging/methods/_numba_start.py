"""One way in for every module of numba loops: `import_loops(name)`.

The first call starts numba (its import, and the loading of its CPU target's typing and
lowering registries, which every first compile or cache load does) without one of its costs:
those registries probe for SciPy's BLAS (``import scipy.linalg.cython_blas``, about 0.25 s of
imports holding the GIL, on the critical path of the first large tensor) to decide whether
``np.vdot``-style inner products inside compiled code may call BLAS. None of the merge loops
uses them (and ``np.dot`` / ``np.linalg`` probe again, lazily, where they are compiled), so
the probe is answered "absent" while the registries load, when SciPy's linear algebra is not
imported yet — and only then: the entry is removed right after, so that any later
``import scipy.linalg`` works as usual.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import os
import sys
import threading
from collections.abc import Iterator
from types import ModuleType

# whether the compiled loops may run at all (each module keeps its own `available`, cleared
# where its loops fail to load)
AVAILABLE = not os.environ.get("HUBMERGE_NO_JIT") and importlib.util.find_spec("numba") is not None
_PROBES = ("scipy.linalg.cython_blas", "scipy.linalg.cython_lapack")
_lock = threading.RLock()
_started = False
_loaded: dict[str, ModuleType] = {}  # fully imported loop modules


def _start() -> None:
    global _started
    if not _started:
        loaded = "scipy.linalg" in sys.modules
        blocked = [] if loaded else [p for p in _PROBES if p not in sys.modules]
        for name in blocked:
            sys.modules[name] = None  # type: ignore[assignment]  # "import halted": ImportError
        try:
            from numba.core.registry import cpu_target

            cpu_target.target_context.refresh()  # the registries, loaded once per process
        finally:
            for name in blocked:
                if sys.modules.get(name, False) is None:
                    del sys.modules[name]
        _started = True


def import_loops(name: str) -> ModuleType:
    """``importlib.import_module(name)`` for a module of numba loops, numba started first.

    Starting numba and importing loops create a few hundred thousand long-lived objects (its
    registries and type caches): with the cyclic garbage collector on, that triggers full
    collections, each traversing every object of the process (~0.1 s holding the GIL,
    several per merge). So they are created with automatic collection paused, and then frozen
    once per module (`gc.freeze`: left out of later collections; objects still die by
    reference counting as usual, only garbage cycles alive at that moment would outlive it).
    """
    module = _loaded.get(name)
    if module is not None:
        return module
    with _lock:
        module = _loaded.get(name)
        if module is None:
            with paused_collection():
                _start()
                module = importlib.import_module(name)
            _loaded[name] = module
    return module


@contextlib.contextmanager
def paused_collection() -> Iterator[None]:
    """Automatic garbage collection off inside (as it was after), then everything alive
    frozen (`import_loops`): for code that creates many long-lived objects at once, such as
    numba loading its compiled loops."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.freeze()
