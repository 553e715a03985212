"""Starting numba for the merge loops skips SciPy's BLAS probe and leaves SciPy importable,
and picks the vector width the loops are compiled for."""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("numba")

from merging.methods import _numba_start

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from merging.methods._numba_start import import_loops

    assert "scipy.linalg" not in sys.modules
    loops = import_loops("merging.methods._jit_loops")
    out = np.zeros(3, dtype=np.float32)
    base = np.array([1, 2, 3], dtype=np.float32)
    loops.magnitudes(base, np.array([2, 0, 3], dtype=np.float32), out)
    assert out.tolist() == [1.0, 2.0, 0.0], out
    print("scipy.linalg loaded by the start:", "scipy.linalg" in sys.modules)
    import scipy.linalg
    from scipy.linalg import cython_blas
    assert cython_blas is sys.modules["scipy.linalg.cython_blas"]
    print(float(scipy.linalg.norm(np.ones(4))))
    """
)


def test_start_skips_the_blas_probe_and_scipy_still_imports():
    """Run twice: on a cold cache the first run compiles the loop, and numba's compiler loads
    SciPy's linear algebra itself (only cache loads skip the probe)."""
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
    assert "scipy.linalg loaded by the start: False" in done.stdout
    assert done.stdout.strip().endswith("2.0")


GC_SCRIPT = textwrap.dedent(
    """
    import gc
    from merging.methods._numba_start import import_loops

    collections = []
    gc.callbacks.append(lambda phase, info: collections.append(info["generation"]))
    gc.disable()  # a caller's choice survives the load
    import_loops("merging.methods._jit_loops")
    assert not gc.isenabled()
    gc.enable()
    before = len(collections)
    frozen = gc.get_freeze_count()
    import_loops("merging.methods._jit_select")
    assert gc.isenabled()
    assert len(collections) == before, collections[before:]  # none while loading
    assert gc.get_freeze_count() > frozen  # the loaded objects are left out from now on
    print("ok")
    """
)


def test_loading_loops_pauses_and_then_freezes_the_garbage_collector():
    done = subprocess.run(
        [sys.executable, "-c", GC_SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


LIGHT_SCRIPT = textwrap.dedent(
    """
    import sys
    import numba
    import numpy as np
    from merging.methods import _numba_start
    from merging.methods._numba_start import import_loops

    loops = import_loops("merging.methods._jit_loops")
    out = np.zeros(3, dtype=np.float32)
    loops.magnitudes(np.ones(3, np.float32), np.array([2, 0, 3], np.float32), out)
    assert out.tolist() == [1.0, 1.0, 2.0], out
    light = ".".join(numba.__version__.split(".")[:2]) in _numba_start.LIGHT_LOADS
    print("registries loaded by the cache load:", "numba.np.linalg" in sys.modules, light)

    @numba.njit  # a compile after the light start refreshes the registries itself
    def dot(a, b):
        return np.dot(a, b) + np.float32(len(a))

    print(float(dot(np.ones(4, np.float32), np.ones(4, np.float32))))
    """
)


def test_cache_loads_skip_the_registries_and_compiles_still_work():
    """A cached loop loads without numba's typing and lowering registries (~0.25 s of
    imports); a later compile (here one calling np.dot) loads them and works. Run twice: the
    first run may have compiled the loop (a cold cache), which refreshes the registries."""
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", LIGHT_SCRIPT], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
    loaded, light = done.stdout.split("cache load: ")[1].split()[:2]
    assert light == "False" or loaded == "False", done.stdout
    assert done.stdout.strip().endswith("8.0")


AVX512 = "+sse2,+avx2,+avx512f,+avx512bw,-amx-tile"


@pytest.mark.parametrize(
    ("name", "features", "bits", "wanted"),
    [
        ("sapphirerapids", AVX512, None, AVX512 + _numba_start.WIDE),
        ("znver4", AVX512, "512", AVX512 + _numba_start.WIDE),
        ("sapphirerapids", AVX512, "256", None),  # the user keeps LLVM's choice
        ("skylake-avx512", AVX512, None, None),  # clocks drop under 512-bit code
        ("skylake-avx512", AVX512, "512", AVX512 + _numba_start.WIDE),  # unless asked
        ("haswell", "+sse2,+avx2,-avx512f", "512", None),  # no AVX-512 to prefer
    ],
)
def test_vector_features_prefer_512_bits_only_where_the_host_has_and_keeps_speed(
    name, features, bits, wanted
):
    assert _numba_start.vector_features(name, features, bits) == wanted


WIDTH_SCRIPT = textwrap.dedent(
    """
    import numba
    from merging.methods._numba_start import import_loops

    import_loops("merging.methods._jit_loops")
    print(repr(numba.config.CPU_FEATURES))
    """
)


def _features_after_start(**env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", WIDTH_SCRIPT], capture_output=True, text=True, timeout=300,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_start_sets_the_chosen_features_and_leaves_a_users_own_alone():
    import llvmlite.binding as ll

    host = ll.get_host_cpu_features().flatten()
    chosen = _numba_start.vector_features(ll.get_host_cpu_name(), host, "512")
    assert _features_after_start(HUBMERGE_VECTOR_BITS="512") == repr(chosen)
    assert _features_after_start(HUBMERGE_VECTOR_BITS="256") == "None"
    assert _features_after_start(NUMBA_CPU_FEATURES=host) == repr(host)
