"""The single methods' compiled loops: what `warm_up` compiles, and when they are declined."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from merging.methods import _compiled, _method_loops

needs_numba = pytest.mark.skipif(
    not _compiled.available, reason="numba missing or HUBMERGE_NO_JIT set"
)


@needs_numba
def test_warm_up_compiles_bf16_and_float32_variants_of_every_loop():
    _method_loops.warm_up()
    for name, loops in (("_jit_ram", ("ram_counts", "ram_apply")),
                        ("_jit_sce", ("sce_observe", "sce_gather", "sce_apply")),
                        ("_jit_fusion", ("kl_gather", "gather_ranges", "fuse"))):  # fmt: skip
        module = _method_loops.loops(name)
        for loop in loops:
            kinds = {str(signature[0].dtype) for signature in getattr(module, loop).signatures}
            assert {"uint16", "float32"} <= kinds, (name, loop, kinds)


BOUNDED = """
from merging.methods import _method_loops
for name in _method_loops.MODULES:
    _method_loops.loops(name).warm_up()
print("in bounds")
"""


@needs_numba
def test_warm_ups_stay_inside_their_buffers(tmp_path):
    """Every single method's warm-up calls its loops within their buffers' bounds: compiled
    with numba's bounds checks (a fresh cache; the merge loops run without them, where an
    index past a buffer writes over the heap, as the Arcee Fusion warm-up's gathers once did
    and aborted `python -m merging.warm_loops` at exit)."""
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", BOUNDED], capture_output=True, text=True,
                          timeout=600, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("in bounds")


def test_declined_off_the_cpu_for_other_dtypes_and_without_numba(monkeypatch):
    cpu = torch.device("cpu")
    bf16 = [torch.zeros(4, dtype=torch.bfloat16)] * 2
    assert _method_loops.takes(bf16, torch.float32, cpu) == _compiled.available
    assert not _method_loops.takes(bf16, torch.float32, torch.device("cuda"))
    assert not _method_loops.takes(bf16, torch.float64, cpu)
    assert not _method_loops.takes([torch.zeros(4, dtype=torch.float16)] * 2, torch.float32, cpu)
    assert not _method_loops.takes([bf16[0], torch.zeros(4), bf16[0]], torch.float32, cpu)
    monkeypatch.setattr(_compiled, "available", False)
    assert not _method_loops.takes(bf16, torch.float32, cpu)
