"""Progress reports: what the engine, the aligner and the downloads tell their caller's callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """One progress report: ``stage`` is "download", "merge" or "align"; bytes are output bytes."""

    stage: str
    done: int
    total: int
    bytes_done: int = 0
    bytes_total: int = 0


ProgressCallback = Callable[[Progress], None]

__all__ = ["Progress", "ProgressCallback"]
