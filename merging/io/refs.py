"""Model references: a local directory, or a Hub repo id with an optional ``@revision``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from merging.errors import RecipeError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


@dataclass(frozen=True)
class ModelRef:
    """Where a model comes from.

    Attributes:
        name: a local path or a Hub repo id.
        revision: branch, tag or commit on the Hub (`None`: the default branch).
        local: whether ``name`` is a local directory.
    """

    name: str
    revision: str | None = None
    local: bool = False

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse ``path``, ``org/name`` or ``org/name@revision``.

        A string naming an existing directory, or starting with ``.``, ``/`` or ``~``, is local.
        """
        text = text.strip()
        if not text:
            raise RecipeError("empty model reference")
        expanded = Path(text).expanduser()
        if text.startswith((".", "/", "~")) or expanded.is_dir():
            return cls(str(expanded), None, local=True)
        name, _, revision = text.partition("@")
        if not _REPO_ID.match(name) or "--" in name or ".." in name:
            raise RecipeError(
                f"{text!r} is neither an existing directory nor a Hub repo id (org/name[@revision])"
            )
        return cls(name, revision or None, local=False)

    def __str__(self) -> str:
        return self.name if self.local or not self.revision else f"{self.name}@{self.revision}"
