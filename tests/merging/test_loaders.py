"""The shared loader of numba loops (`_loaders.Loops`): one background thread, one warm-up per
kind of chunk, waiting only where asked to, and a failed load turning its family off."""

from __future__ import annotations

import logging
import threading

import pytest

from merging.methods import _loaders
from merging.methods._numba_start import AVAILABLE

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="numba is not installed (or disabled)")

MODULE = "merging.methods._jit_loops"  # (loaded by most tests anyway: no extra compile)


def test_each_kind_is_warmed_once_in_the_loader_thread():
    calls = []
    release = threading.Event()

    def warm(kind, module):
        release.wait(10)
        calls.append((kind, module.__name__, threading.current_thread().name))

    loops = _loaders.Loops([MODULE], warm)
    assert not loops.ready("a")  # queued, not waited for
    assert not loops.any_ready()
    release.set()
    assert loops.ready("a", wait=True)
    assert loops.ready("b", wait=True)
    assert loops.ready("a")  # loaded: answered at once, not warmed again
    assert loops.ready("b", wait=True)
    assert calls == [("a", MODULE, "jit-load"), ("b", MODULE, "jit-load")]
    assert loops.any_ready()
    assert [m.__name__ for m in loops.modules] == [MODULE]


def test_a_failed_load_turns_its_family_off_and_nobody_waits_forever(caplog):
    def warm(kind, module):
        raise RuntimeError("no compiler")

    broken = _loaders.Loops([MODULE], warm, label="broken loops")
    with caplog.at_level(logging.WARNING, logger="merging.methods._loaders"):
        assert not broken.ready("a", wait=True)
        assert not broken.ready("b", wait=True)  # off: not queued again
    assert not broken.available
    assert [r.getMessage() for r in caplog.records] == [
        "compiled loops unavailable (broken loops); using torch"
    ]
    healthy = _loaders.Loops([MODULE])  # another family still loads
    assert healthy.ready(wait=True)


def test_concurrent_waiters_share_one_load():
    calls = []
    loops = _loaders.Loops([MODULE], lambda kind, module: calls.append(kind))
    answers = []
    threads = [
        threading.Thread(target=lambda: answers.append(loops.ready("k", wait=True)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers == [True] * 4
    assert calls == ["k"]
