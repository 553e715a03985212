"""Tiny models per architecture family, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.merging.align.helpers import FAMILIES, build


@pytest.fixture(scope="session")
def family_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One randomly initialised tiny model per family (GQA untied/tied, Qwen2 biases, MHA)."""
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("align-families")
    return {family: build(root / family, family, seed=0) for family in FAMILIES}
