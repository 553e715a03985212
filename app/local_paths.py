"""Which local files a request may name: model folders in recipes, example files for soups.

A shared app must not merge from any folder of its server. Local paths are accepted only
when the app listens on a loopback address (a personal app) or when the operator says so
with ``HUBMERGE_ALLOW_LOCAL_PATHS=1``; and never below the app's own data dir (other users'
job outputs, the demo Hub's storage), whatever the setting. Symlinks and ``..`` are resolved
before the check, so a link from an allowed folder into the data dir is refused too.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from app.settings import Settings
from merging import Recipe
from merging.io.refs import ModelRef


class LocalPathError(ValueError):
    """A request names a local path the app does not accept."""


def is_loopback(host: str) -> bool:
    """Whether `host` (the address the app listens on) is reachable only from this machine."""
    host = (host or "").strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def recipe_paths(recipe: Recipe) -> list[str]:
    """Every model reference of a recipe that names a local folder."""
    names = recipe.references()  # slices, adapters and tokenizer sources included
    local = []
    for name in dict.fromkeys(n for n in names if n):
        ref = ModelRef.parse(name)
        if ref.local:
            local.append(ref.name)
    return local


def check_path(path: str | Path, settings: Settings, *, what: str = "Local folders") -> Path:
    """The resolved `path` if a request may use it.

    Raises:
        `LocalPathError`: local paths are off here, or `path` is inside the data dir.
    """
    if not settings.allow_local_paths:
        raise LocalPathError(
            f"{what} are not accepted by this app ({path}); use Hub ids. (The operator can "
            "allow them with HUBMERGE_ALLOW_LOCAL_PATHS=1.)"
        )
    resolved = Path(path).expanduser().resolve()
    data_dir = Path(settings.data_dir).expanduser().resolve()
    if resolved == data_dir or resolved.is_relative_to(data_dir):
        raise LocalPathError(
            f"{path} is inside the app's data dir, which holds other users' jobs; "
            "it cannot be used as a source."
        )
    return resolved


def check_recipe_paths(recipe: Recipe, settings: Settings) -> None:
    """Refuse a recipe naming a local folder the app may not read (see `check_path`)."""
    for path in recipe_paths(recipe):
        check_path(path, settings)
    align = getattr(recipe, "align", None)  # calibration texts of `align: {examples: F}`
    if align is not None and align.examples:
        check_path(align.examples, settings, what="Local example files")
