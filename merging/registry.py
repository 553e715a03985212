"""A small typed registry: register by name, look up with "did you mean …?"."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from merging.errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to entries; rejects duplicates and answers unknown names with suggestions.

    Args:
        kind (`str`): what the entries are, used in error messages ("merge method").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if not name or not name.replace("_", "").isalnum() or name.lower() != name:
            raise RegistryError(f"{self.kind} name {name!r} must be lower_snake_case")
        if name in self._entries:
            raise RegistryError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str, make: Callable[[Callable[..., object]], T]) -> Callable[..., T]:
        def wrap(fn: Callable[..., object]) -> T:
            return self.add(name, make(fn))

        return wrap

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise RegistryError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
