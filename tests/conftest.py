"""Shared fixtures: tiny seeded Llama checkpoints built locally (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["tests.hub_fixtures"]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A base and three fine-tunes (base + seeded noise), each sharded into 2+ files."""
    from tests.helpers.tiny import build_llama

    root = tmp_path_factory.mktemp("tiny")
    base = build_llama(root / "base", seed=0)
    return {
        "base": base,
        "ft1": build_llama(root / "ft1", seed=1, base=base),
        "ft2": build_llama(root / "ft2", seed=2, base=base),
        "ft3": build_llama(root / "ft3", seed=3, base=base),
    }
