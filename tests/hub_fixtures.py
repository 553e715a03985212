"""A real local Hub for tests: `app.hub_server` on 127.0.0.1, reached by the real client.

`huggingface_hub` reads `HF_ENDPOINT`, `HF_HUB_DISABLE_XET`, `HF_HUB_OFFLINE` and the cache
paths once, at import; the fixture therefore patches both the environment and
`huggingface_hub.constants` (and resets transformers' cached `HfApi`), so that code which
passes no `endpoint=` (transformers) talks to the local server too.

Share it with ``pytest_plugins = ["tests.hub_fixtures"]`` in tests/conftest.py, or import the
fixtures into a test module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TOKENS = {"hf_alice_secret_token": "alice", "hf_bob_secret_token": "bob"}
ALICE, BOB = "hf_alice_secret_token", "hf_bob_secret_token"


@dataclass
class LocalHub:
    """A running local Hub: its URL, data dir, test hooks, and tokens of two users."""

    url: str
    data_dir: Path
    control: object  # app.hub_server.ServerControl
    alice: str = ALICE
    bob: str = BOB


def point_client_at(url: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    env = {
        "HF_ENDPOINT": url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    patched = {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
    }
    for name, value in patched.items():
        monkeypatch.setattr(constants, name, value)
    with contextlib.suppress(ImportError):
        import transformers.utils.hub as transformers_hub

        monkeypatch.setattr(transformers_hub, "_hf_api", None)


@contextlib.contextmanager
def start_hub(data_dir: Path) -> Iterator[tuple[str, object]]:
    """Start a server on `data_dir` with the test tokens; yields (url, control)."""
    from app.hub_server import create_app, running_app

    app = create_app(data_dir, tokens=TOKENS)
    with running_app(app) as url:
        yield url, app.state.control


@pytest.fixture
def local_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    """A fresh local Hub with users alice and bob; the HF client is pointed at it."""
    pytest.importorskip("fastapi")
    data_dir = tmp_path / "hub-data"
    with start_hub(data_dir) as (url, control):
        point_client_at(url, tmp_path / "hf-home", monkeypatch)
        yield LocalHub(url=url, data_dir=data_dir, control=control)


def save_tiny_llama(path: Path, *, seed: int = 0, shard_size: str = "40KB") -> Path:
    """A seeded random `LlamaForCausalLM` (hidden 32, 2 layers, vocab 128) in several shards."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(path, max_shard_size=shard_size)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny Llama checkpoint (3 safetensors shards + index) shared by the session."""
    return save_tiny_llama(tmp_path_factory.mktemp("hub-llama") / "tiny-llama")
