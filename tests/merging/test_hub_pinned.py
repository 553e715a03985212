"""`merging.hub.pinned`: headers of a pinned commit are read once per process, and only a
caller whose own token pins the commit gets them (local Hub server, real client)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from huggingface_hub import HfApi

from merging import hub, load_recipe
from merging.check import check_recipe
from merging.errors import AuthError, GatedRepoAccessError, NotFoundError
from merging.hub.pinned import PINNED_CACHE, ByteCache
from tests import hub_fixtures
from tests.hub_fixtures import LocalHub

local_hub = hub_fixtures.local_hub
tiny_llama_dir = hub_fixtures.tiny_llama_dir


@pytest.fixture(autouse=True)
def empty_cache() -> None:
    PINNED_CACHE.clear()


def _push(local_hub: LocalHub, folder: Path, repo_id: str, *, private: bool = False) -> str:
    result = hub.push_folder(
        folder, repo_id=repo_id, token=local_hub.alice, private=private, endpoint=local_hub.url
    )
    return result.commit_sha


def _gated(local_hub: LocalHub, folder: Path, repo_id: str) -> None:
    """alice's repo, gated (anyone may see its metadata; its files need access)."""
    _push(local_hub, folder, repo_id)
    HfApi(endpoint=local_hub.url, token=local_hub.alice).update_repo_settings(repo_id, gated="auto")


def _file_requests(local_hub: LocalHub) -> dict[str, int]:
    """Requests for file contents (``/resolve/``) the server answered since the last reset."""
    requests = local_hub.control.requests  # type: ignore[attr-defined]
    return {k: v for k, v in requests.items() if "/resolve/" in k}


def _api_requests(local_hub: LocalHub) -> dict[str, int]:
    requests = local_hub.control.requests  # type: ignore[attr-defined]
    return {k: v for k, v in requests.items() if k.startswith("GET /api/models/")}


def test_second_check_of_a_pinned_commit_reads_no_header(
    local_hub: LocalHub, tiny_llama_dir: Path
) -> None:
    for name in ("alice/one", "alice/two"):
        _push(local_hub, tiny_llama_dir, name)
    recipe = load_recipe(
        "merge_method: linear\nmodels:\n  - model: alice/one\n    parameters: {weight: 0.5}\n"
        "  - model: alice/two\n    parameters: {weight: 0.5}\n"
    )
    first = check_recipe(recipe, token=local_hub.alice, endpoint=local_hub.url)
    assert first.ok
    shards = len(list(tiny_llama_dir.glob("*.safetensors")))
    assert sum(_file_requests(local_hub).values()) >= 2 * 2 * shards  # two ranges per shard
    local_hub.control.reset()  # type: ignore[attr-defined]
    second = check_recipe(recipe, token=local_hub.alice, endpoint=local_hub.url)
    assert second.render() == first.render()
    assert _file_requests(local_hub) == {}
    # the revision is still resolved with the caller's token, once per model and call
    assert _api_requests(local_hub) == {
        "GET /api/models/alice/one": 1,
        "GET /api/models/alice/two": 1,
    }
    assert len(PINNED_CACHE) == 2 * (shards + 2)  # headers, index and config per model
    assert all(local_hub.alice not in repr(key) for key in PINNED_CACHE._items)


def test_a_new_commit_is_read_not_served_stale(
    local_hub: LocalHub, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    old = _push(local_hub, tiny_llama_dir, "alice/moving")
    before = hub.remote_tensor_headers("alice/moving", endpoint=local_hub.url)
    folder = tmp_path / "new"
    folder.mkdir()
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    (folder / "config.json").write_text('{"architectures": ["Tiny"]}')
    api = HfApi(endpoint=local_hub.url, token=local_hub.alice)
    api.delete_files("alice/moving", delete_patterns=["*.safetensors", "*.json"])
    new = api.upload_folder(repo_id="alice/moving", folder_path=folder).oid
    assert new != old
    model = hub.remote_model("alice/moving", endpoint=local_hub.url)
    assert model.sha == new
    assert list(model.headers) == ["w"]
    assert model.config == {"architectures": ["Tiny"]}
    again = hub.remote_tensor_headers("alice/moving", revision=old, endpoint=local_hub.url)
    assert again == before  # the old commit still answers from its own entries


def test_private_headers_are_not_served_to_a_caller_without_access(
    local_hub: LocalHub, tiny_llama_dir: Path
) -> None:
    sha = _push(local_hub, tiny_llama_dir, "alice/private", private=True)
    url, alice, bob = local_hub.url, local_hub.alice, local_hub.bob
    mine = hub.remote_model("alice/private", token=alice, endpoint=url)
    assert mine.headers
    cached = len(PINNED_CACHE)
    assert cached > 0
    local_hub.control.reset()  # type: ignore[attr-defined]
    for token, error in ((bob, NotFoundError), (None, AuthError), ("hf_wrong", AuthError)):
        for revision in (None, sha):
            with pytest.raises(error):
                hub.remote_tensor_headers("alice/private", revision=revision, token=token,
                                          endpoint=url)  # fmt: skip
            with pytest.raises(error):
                hub.remote_config("alice/private", revision=revision, token=token, endpoint=url)
    recipe = load_recipe("merge_method: linear\nmodels:\n  - model: alice/private\n")
    with pytest.raises(NotFoundError):
        check_recipe(recipe, token=bob, endpoint=url)
    assert _file_requests(local_hub) == {}  # refused when pinning: no file was asked for
    assert len(PINNED_CACHE) == cached
    assert hub.remote_model("alice/private", token=alice, endpoint=url) == mine


def test_gated_repo_files_are_asked_for_with_each_callers_token(
    local_hub: LocalHub, tiny_llama_dir: Path
) -> None:
    _gated(local_hub, tiny_llama_dir, "alice/gated")
    url, alice, bob = local_hub.url, local_hub.alice, local_hub.bob
    mine = hub.remote_model("alice/gated", token=alice, endpoint=url)
    assert mine.headers
    # a gated repo's metadata is visible to bob: pinning succeeds, its files are refused
    with pytest.raises(GatedRepoAccessError):
        hub.remote_tensor_headers("alice/gated", token=bob, endpoint=url)
    with pytest.raises(GatedRepoAccessError):
        hub.remote_config("alice/gated", token=bob, endpoint=url)
    local_hub.control.reset()  # type: ignore[attr-defined]
    assert hub.remote_model("alice/gated", token=alice, endpoint=url) == mine
    assert _file_requests(local_hub)  # alice's own token read them again


def test_byte_cache_is_bounded_and_least_recently_used() -> None:
    cache = ByteCache(max_bytes=10, max_entries=3)

    def key(name: str) -> tuple[str, str, str, str, str]:
        return ("http://hub", "a/b", "0" * 40, name, "header")

    cache.put(key("a"), b"1234")
    cache.put(key("b"), b"1234")
    assert cache.get(key("a")) == b"1234"  # a is now the most recently used
    cache.put(key("c"), b"1234")  # 12 bytes > 10: the least recently used (b) goes
    assert cache.get(key("b")) is None
    assert (cache.get(key("a")), cache.get(key("c"))) == (b"1234", b"1234")
    assert cache.nbytes == 8
    cache.put(key("big"), b"x" * 11)  # larger than the whole cache: not kept, nothing evicted
    assert cache.get(key("big")) is None
    assert len(cache) == 2
    for name in "defg":
        cache.put(key(name), b"1")
    assert len(cache) == 3
    assert cache.nbytes <= 10


def test_gated_download_is_refused_even_when_the_files_are_on_disk(
    local_hub: LocalHub, tiny_llama_dir: Path
) -> None:
    _gated(local_hub, tiny_llama_dir, "alice/gated-weights")
    url, alice, bob = local_hub.url, local_hub.alice, local_hub.bob
    path = hub.download_model("alice/gated-weights", token=alice, endpoint=url)
    assert (path / "config.json").is_file()  # the snapshot is in the shared HF cache now
    for token in (bob, None):
        with pytest.raises((GatedRepoAccessError, AuthError)):
            hub.download_model("alice/gated-weights", token=token, endpoint=url)
    assert hub.download_model("alice/gated-weights", token=alice, endpoint=url) == path
