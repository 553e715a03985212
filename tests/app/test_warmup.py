"""`app.warmup`: the evaluation stack imported and the heap frozen at start; gradio's
monitoring summary rebuilt rarely."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import gradio as gr
import pytest

from app.warmup import MONITORING_EVERY, quiet_monitoring, warm_up


@pytest.fixture
def unfreeze() -> Iterator[None]:
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfreeze")
def test_warm_up_imports_and_freezes() -> None:
    sys.modules.pop("colorsys", None)
    alive = [[] for _ in range(1000)]  # made before: frozen, no collection walks them again
    missing = warm_up(("colorsys", "hubmerge_no_such_module"))
    assert missing == ["hubmerge_no_such_module"]
    assert "colorsys" in sys.modules
    assert gc.get_freeze_count() >= len(alive)
    assert not any(obj is alive for obj in gc.get_objects())  # frozen: outside every generation


def test_gradio_rebuilds_its_monitoring_summary_rarely(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRADIO_ANALYTICS_CACHE_FREQUENCY", raising=False)
    quiet_monitoring()
    with gr.Blocks() as demo:
        gr.Markdown("x")
    every = demo.queue()._queue.ANAYLTICS_CACHE_FREQUENCY  # gradio's spelling
    assert every == int(MONITORING_EVERY)
    monkeypatch.setenv("GRADIO_ANALYTICS_CACHE_FREQUENCY", "7")  # the operator's value wins
    quiet_monitoring()
    assert demo.queue()._queue.ANAYLTICS_CACHE_FREQUENCY == 7
