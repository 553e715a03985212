"""One way in for every module of numba loops: `import_loops(name)`.

The first call starts numba (its import, and what loading cached machine code needs) without
two of its costs, both on the critical path of the first large tensor and holding the GIL:

- A cache load asks numba's CPU target to "refresh" first: import and install every typing
  and lowering registry (~75 modules, ~0.25 s) — which a load does not use: it unpickles the
  machine code and its descriptors (importing the few modules they name) and needs only the
  runtime (NRT) initialised. So cache loads initialise the runtime alone (`_light_loads`);
  numba's compiler still refreshes the registries itself before any compile, and a load that
  fails this way is retried the usual way. (Only on numba versions this was checked with.)
- Where the registries do load (a compile), they probe for SciPy's BLAS
  (``import scipy.linalg.cython_blas``, about 0.25 s of imports) to decide whether
  ``np.vdot``-style inner products inside compiled code may call BLAS. None of the merge loops
  uses them (and ``np.dot`` / ``np.linalg`` probe again, lazily, where they are compiled), so
  the probe is answered "absent" while numba starts when SciPy's linear algebra is not
  imported yet — and only then: the entry is removed right after, so that any later
  ``import scipy.linalg`` works as usual.

It also chooses the vector width LLVM compiles the loops for (`vector_features`): on CPUs with
AVX-512 that do not slow down for it, 512-bit vectors (LLVM's default there is 256-bit). The
loops round every element exactly as before (no fast-math: no reassociated sums), so only the
speed changes; ``HUBMERGE_VECTOR_BITS=256`` keeps LLVM's choice.
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
from typing import Any

# whether the compiled loops may run at all (each module keeps its own `available`, cleared
# where its loops fail to load)
AVAILABLE = not os.environ.get("HUBMERGE_NO_JIT") and importlib.util.find_spec("numba") is not None
_PROBES = ("scipy.linalg.cython_blas", "scipy.linalg.cython_lapack")
_lock = threading.RLock()
_started = False
_loaded: dict[str, ModuleType] = {}  # fully imported loop modules
# LLVM's names of the CPUs whose clocks drop under 512-bit vector code (Skylake-SP family)
SLOWED_BY_WIDE_VECTORS = ("skylake-avx512", "cascadelake", "cooperlake", "cannonlake")
WIDE = ",-prefer-256-bit"
LIGHT_LOADS = ("0.60", "0.61", "0.62", "0.63", "0.64", "0.65", "0.66", "0.67", "0.68")


def _light_loads() -> bool:
    """Make numba's cache loads initialise only its runtime instead of refreshing every
    registry (module docstring); False (nothing changed) on a numba version not checked."""
    import numba
    from numba.core import caching
    from numba.core.runtime import nrt

    if ".".join(numba.__version__.split(".")[:2]) not in LIGHT_LOADS:
        return False
    usual = caching.Cache.load_overload
    if getattr(usual, "_hubmerge_light", False):
        return True

    def load_overload(self: Any, sig: Any, target_context: Any) -> Any:
        try:
            nrt.rtsys.initialize(target_context)
            with self._guard_against_spurious_io_errors():
                return self._load_overload(sig, target_context)
        except Exception:  # pragma: no cover - the usual way, registries and all
            return usual(self, sig, target_context)

    load_overload._hubmerge_light = True  # type: ignore[attr-defined]
    caching.Cache.load_overload = load_overload  # type: ignore[method-assign]
    return True


def vector_features(name: str, features: str, bits: str | None) -> str | None:
    """The CPU features numba should compile for on a host of LLVM CPU ``name`` with
    ``features`` (LLVM's flattened list), or None for its own choice: 512-bit vectors
    preferred where the host has AVX-512F, is not `SLOWED_BY_WIDE_VECTORS`, and ``bits``
    (``HUBMERGE_VECTOR_BITS``) is not "256"."""
    if bits == "256" or "+avx512f" not in features.split(","):
        return None
    if name in SLOWED_BY_WIDE_VECTORS and bits != "512":
        return None
    return features + WIDE


def _choose_vector_width() -> None:
    """Set numba's CPU features (`vector_features`) before its code generator exists; left
    alone where the user set ``NUMBA_CPU_FEATURES`` / ``NUMBA_CPU_NAME`` or numba already
    compiled something in this process."""
    import llvmlite.binding as ll
    from numba.core import config
    from numba.core.registry import cpu_target

    settings = vars(config)  # (numba sets its config's names from the environment at import)
    started = "_toplevel_target_context" in vars(cpu_target)
    if started or settings.get("CPU_FEATURES") is not None or settings.get("CPU_NAME") is not None:
        return
    bits = os.environ.get("HUBMERGE_VECTOR_BITS")
    chosen = vector_features(ll.get_host_cpu_name(), ll.get_host_cpu_features().flatten(), bits)
    if chosen is not None:
        settings["CPU_FEATURES"] = chosen


def _start() -> None:
    global _started
    if not _started:
        _choose_vector_width()
        loaded = "scipy.linalg" in sys.modules
        blocked = [] if loaded else [p for p in _PROBES if p not in sys.modules]
        for name in blocked:
            sys.modules[name] = None  # type: ignore[assignment]  # "import halted": ImportError
        try:
            if not _light_loads():
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
