"""One error hierarchy for the evaluation package.

Each error also subclasses the builtin that callers already catch, so an
``except ValueError`` written before these existed keeps working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EvaluationError(Exception):
    """Base class of every error raised on purpose by `evaluation`."""


class UnknownNameError(EvaluationError, KeyError):
    """A name (task, suite, model label) is unknown; the message suggests close matches."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        listing = ", ".join(known[:20]) + (" …" if len(known) > 20 else "")
        super().__init__(f"unknown {kind} {name!r}.{hint} Known: {listing}")
        self.name = name
        self.suggestions = close

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnknownTaskError(UnknownNameError):
    """A harness task name is not in the task index."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        super().__init__("task", name, known)


class UnknownSuiteError(UnknownNameError):
    """A benchmark suite name is not registered."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        super().__init__("suite", name, known)


class ModelLoadError(EvaluationError, OSError):
    """A model or tokenizer cannot be loaded from the given path."""


class IncompatibleModelsError(EvaluationError, ValueError):
    """Models cannot be combined (ensemble, interpolation): shapes or vocabularies differ."""


class DataError(EvaluationError, ValueError):
    """Examples or benchmark data are malformed or missing."""


class DataUnavailableError(DataError, OSError):
    """Benchmark data cannot be obtained (no cached copy and the download failed)."""


class HarnessError(EvaluationError, RuntimeError):
    """lm-evaluation-harness failed or returned results we cannot read."""
