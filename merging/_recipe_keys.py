"""Where mergekit is lenient, hubmerge is too, but never silently: each key that has no effect
is dropped from the data before validation and reported as a warning with the likely intended
key ("did you mean ...?", by `difflib`).

mergekit's pydantic models (``mergekit/config.py``) ignore unknown keys and accept
``parameters: null``; so a published recipe with a typo (``nomalize``) was merged as if the key
were absent. hubmerge loads it the same way and says so.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

MODEL_KEYS = ("model", "adapter", "parameters")
SLICE_KEYS = ("sources", "parameters", "base_model")
SLICE_SOURCE_KEYS = ("model", "adapter", "layer_range", "parameters")
NO_EFFECT = {
    # keys mergekit reads but that change nothing in hubmerge (or in mergekit itself)
    "residual_weight": "mergekit 0.1.5 parses a slice's residual_weight but never uses it",
}


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """`` did you mean 'x'?`` for the closest known key, or an empty string."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def unknown_key(where: str, key: str, known: Iterable[str]) -> str:
    return f"{where}{key}: unknown key, ignored (mergekit ignores it too){did_you_mean(key, known)}"


class Lenient:
    """Collects warnings while cleaning one recipe mapping."""

    def __init__(self, top_level: Iterable[str]) -> None:
        self.top_level = tuple(top_level)
        self.warnings: list[str] = []

    def clean(self, data: dict[str, Any]) -> dict[str, Any]:
        out = self._keys(data, "", self.top_level)
        self._parameters(out, "")
        if isinstance(out.get("models"), list):
            out["models"] = [
                self._entry(m, f"models[{i}].", MODEL_KEYS) for i, m in enumerate(out["models"])
            ]
        if isinstance(out.get("slices"), list):
            out["slices"] = [self._slice(s, i) for i, s in enumerate(out["slices"])]
        return out

    def _slice(self, data: Any, index: int) -> Any:
        where = f"slices[{index}]."
        data = self._entry(data, where, SLICE_KEYS)
        if isinstance(data, dict) and isinstance(data.get("sources"), list):
            data["sources"] = [
                self._entry(s, f"{where}sources[{j}].", SLICE_SOURCE_KEYS)
                for j, s in enumerate(data["sources"])
            ]
        return data

    def _entry(self, data: Any, where: str, known: tuple[str, ...]) -> Any:
        if not isinstance(data, dict):
            return data
        out = self._keys(data, where, known)
        self._parameters(out, where)
        return out

    def _keys(self, data: dict[str, Any], where: str, known: tuple[str, ...]) -> dict[str, Any]:
        out = {}
        for key, value in data.items():
            if key in known:
                out[key] = value
            elif key in NO_EFFECT:
                self.warnings.append(f"{where}{key}: has no effect ({NO_EFFECT[key]}), ignored")
            else:
                self.warnings.append(unknown_key(where, str(key), known))
        return out

    def _parameters(self, data: dict[str, Any], where: str) -> None:
        if "parameters" in data and data["parameters"] is None:
            self.warnings.append(
                f"{where}parameters: empty (YAML null), sets nothing; mergekit reads it the same"
            )
            data["parameters"] = {}


__all__ = ["Lenient", "did_you_mean", "unknown_key"]
