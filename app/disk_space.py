"""Before a merge starts: does its output (and what must be downloaded) fit on the disk?

A shared disk fills up; a merge that runs out of space half way wastes everyone's time. The
sizes come from the compatibility check (safetensors headers only, nothing downloaded): the
output's bytes, plus the bytes of every Hub source, which land in the Hugging Face cache.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from merging import Recipe
from merging.errors import OutputError

GB = 1e9
logger = logging.getLogger(__name__)


def _existing(path: Path) -> Path:
    path = Path(path).expanduser().absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def needed_bytes(
    recipe: Recipe, *, token: str | None, endpoint: str | None
) -> tuple[int, int] | None:
    """(output bytes, download bytes) of `recipe`'s merge; None when they cannot be known
    (models incompatible or unreachable, a recipe the header check does not cover): the merge
    itself then reports the problem precisely, and its writer still checks each shard."""
    from merging.check import check_recipe

    try:
        report = check_recipe(recipe, token=token, endpoint=endpoint)
    except Exception as err:
        logger.info("no disk estimate before the merge (%s)", type(err).__name__)
        return None
    if not report.ok:
        return None
    return report.output_bytes, report.download_bytes


def ensure_disk_space(
    output: Path,
    output_bytes: int,
    download_bytes: int,
    *,
    reserve_bytes: int = 0,
    cache: Path | None = None,
) -> None:
    """Refuse, with the figures, a merge whose output and downloads do not fit.

    Args:
        output (`Path`): where the merge writes (may not exist yet).
        output_bytes / download_bytes (`int`): from `needed_bytes`.
        reserve_bytes (`int`, *optional*): free space to leave (``HUBMERGE_DISK_RESERVE_GB``).
        cache (`Path`, *optional*): where downloads go (default: the Hugging Face cache).

    Raises:
        `OutputError`: not enough free space; the message gives what is needed and free.
    """
    target, cache_dir = _existing(output), _existing(cache or _hub_cache())
    same_disk = os.stat(target).st_dev == os.stat(cache_dir).st_dev
    checks = [(target, output_bytes + (download_bytes if same_disk else 0))]
    if not same_disk:
        checks.append((cache_dir, download_bytes))
    for folder, need in checks:
        free = shutil.disk_usage(folder).free
        if need + reserve_bytes > free:
            parts = f"{output_bytes / GB:.3f} GB output + {download_bytes / GB:.3f} GB downloads"
            if not same_disk:
                parts = (f"{output_bytes / GB:.3f} GB output" if folder == target
                         else f"{download_bytes / GB:.3f} GB downloads")  # fmt: skip
            keep = f", keeping {reserve_bytes / GB:.3f} GB free" if reserve_bytes else ""
            raise OutputError(
                f"Not enough disk space for this merge: it needs {need / GB:.3f} GB ({parts})"
                f"{keep}, and {free / GB:.3f} GB is free in {folder}. Free some space or "
                "ask the operator (old job outputs are removed after HUBMERGE_KEEP_HOURS)."
            )
