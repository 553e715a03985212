"""Helpers shared by CLI commands: tokens and progress bars."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_token_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token-file",
        type=Path,
        help="file holding a Hub token (default: the HF_TOKEN environment variable)",
    )


def read_token(args: argparse.Namespace) -> str | None:
    """The Hub token from ``--token-file`` or ``HF_TOKEN``; never printed or logged."""
    path = getattr(args, "token_file", None)
    if path is not None:
        return Path(path).read_text(encoding="utf-8").strip() or None
    return os.environ.get("HF_TOKEN") or None


def tqdm_progress() -> tuple[Callable[[Any], None], Callable[[], None]]:
    """A merge progress callback drawing tqdm bars, and a function closing them."""
    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}

    def update(event: Any) -> None:
        bar = bars.get(event.stage)
        if bar is None:
            bar = bars[event.stage] = tqdm(total=event.total, desc=event.stage, unit="tensor")
        bar.total = event.total
        bar.n = event.done
        bar.refresh()

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return update, close
