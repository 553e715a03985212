"""`merging.hub` against the local Hub server, through the real `huggingface_hub` client."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from huggingface_hub import HfApi, ModelCard

from merging import hub
from merging.errors import (
    AuthError,
    GatedRepoAccessError,
    HubError,
    NotFoundError,
    RepoExistsError,
    UnsafeCheckpointError,
)
from tests import hub_fixtures
from tests.hub_fixtures import LocalHub

# fixtures (until tests/conftest.py lists "tests.hub_fixtures" in pytest_plugins)
local_hub = hub_fixtures.local_hub
tiny_llama_dir = hub_fixtures.tiny_llama_dir


def _card(folder: Path, extra: str = "") -> None:
    (folder / "README.md").write_text(
        f"---\nlicense: apache-2.0\nbase_model: meta/base\n{extra}---\n# Merged\n"
    )


@pytest.fixture
def pushed_llama(local_hub: LocalHub, tiny_llama_dir: Path, tmp_path: Path) -> str:
    """alice/tiny (public): the tiny Llama plus a card, a pickle file and a stray subfolder."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    for path in tiny_llama_dir.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    _card(folder)
    (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    (folder / "extra").mkdir()
    (folder / "extra" / "other.safetensors").write_bytes(b"ignored")
    hub.push_folder(folder, repo_id="alice/tiny", token=local_hub.alice, endpoint=local_hub.url)
    return "alice/tiny"


def _local_headers(folder: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    found = {}
    for shard in folder.glob("*.safetensors"):
        with shard.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        header.pop("__metadata__", None)
        found.update({k: (tuple(v["shape"]), v["dtype"]) for k, v in header.items()})
    return found


def test_resolve_and_download_only_merge_files(
    local_hub: LocalHub, pushed_llama: str, tiny_llama_dir: Path
) -> None:
    sha = hub.resolve_revision(pushed_llama, endpoint=local_hub.url)
    assert len(sha) == 40
    assert hub.resolve_revision(pushed_llama, sha, endpoint=local_hub.url) == sha
    calls: list[tuple[int, int]] = []
    path = hub.download_model(
        pushed_llama,
        endpoint=local_hub.url,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert path.name == sha
    files = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors.index.json", "generation_config.json"} <= files
    assert "README.md" in files  # the card: licence lineage for the merged card
    assert not {"pytorch_model.bin", "extra"} & files
    for shard in tiny_llama_dir.glob("*.safetensors"):
        assert (path / shard.name).read_bytes() == shard.read_bytes()
    assert calls[-1][0] == calls[-1][1] > 0
    with_pickle = hub.download_model(pushed_llama, endpoint=local_hub.url, allow_pickle=True)
    assert (with_pickle / "pytorch_model.bin").is_file()


def test_pickle_only_repo_is_refused(local_hub: LocalHub, tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    hub.push_folder(folder, repo_id="alice/old", token=local_hub.alice, endpoint=local_hub.url)
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle"):
        hub.download_model("alice/old", endpoint=local_hub.url)


def test_remote_headers_read_no_weight_data(
    local_hub: LocalHub, pushed_llama: str, tiny_llama_dir: Path
) -> None:
    local_hub.control.reset()
    headers = hub.remote_tensor_headers(pushed_llama, endpoint=local_hub.url)
    expected = _local_headers(tiny_llama_dir)
    assert {name: (h.shape, h.dtype) for name, h in headers.items()} == expected
    for shard in tiny_llama_dir.glob("*.safetensors"):
        with shard.open("rb") as handle:
            header_bytes = 8 + struct.unpack("<Q", handle.read(8))[0]
        served = local_hub.control.bytes_served[f"{pushed_llama}/{shard.name}"]
        assert served == header_bytes < shard.stat().st_size
    config = hub.remote_config(pushed_llama, endpoint=local_hub.url)
    assert config["architectures"] == ["LlamaForCausalLM"]


def test_search_summaries(local_hub: LocalHub, pushed_llama: str, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": "alice/tiny"})
    )
    (adapter / "adapter_model.safetensors").write_bytes(_tiny_safetensors())
    hub.push_folder(
        adapter, repo_id="alice/tiny-lora", token=local_hub.alice, endpoint=local_hub.url
    )
    results = {s.id: s for s in hub.search_models("tiny", endpoint=local_hub.url)}
    assert set(results) == {"alice/tiny", "alice/tiny-lora"}
    model = results["alice/tiny"]
    assert model.architecture == "LlamaForCausalLM"
    assert model.dtype == "F32"
    assert model.parameters is not None
    assert model.parameters > 10_000
    assert model.license == "apache-2.0"
    assert model.base_models == ("meta/base",)
    assert not model.is_adapter
    lora = results["alice/tiny-lora"]
    assert lora.is_adapter
    assert lora.adapter_base_model == "alice/tiny"
    assert [s.id for s in hub.search_models("", author="nobody", endpoint=local_hub.url)] == []


def _tiny_safetensors() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * 8


def test_push_conflicts_and_card(local_hub: LocalHub, tmp_path: Path) -> None:
    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(_tiny_safetensors())
    _card(folder)
    results = [
        {"task_name": "ARC", "task_type": "text-generation", "dataset_name": "ARC Easy",
         "dataset_type": "ai2_arc", "metric_name": "Accuracy", "metric_type": "acc",
         "metric_value": 0.5},
    ]  # fmt: skip
    hub.write_eval_results_to_card(folder, results, model_name="merged")
    assert ModelCard.load(folder / "README.md").data.eval_results[0].metric_value == 0.5
    pushed = hub.push_folder(
        folder, repo_id="alice/merged", token=local_hub.alice, private=True, endpoint=local_hub.url
    )
    assert pushed.repo_url.endswith("/alice/merged")
    assert pushed.commit_sha in pushed.commit_url
    info = HfApi(endpoint=local_hub.url, token=local_hub.alice).model_info("alice/merged")
    assert info.sha == pushed.commit_sha
    assert info.card_data.eval_results[0].dataset_name == "ARC Easy"
    with pytest.raises(RepoExistsError):
        hub.push_folder(
            folder, repo_id="alice/merged", token=local_hub.alice, endpoint=local_hub.url
        )
    again = hub.push_folder(
        folder, repo_id="alice/merged", token=local_hub.alice, exist_ok=True, endpoint=local_hub.url
    )
    assert again.commit_sha == pushed.commit_sha  # nothing changed: no new commit


def test_error_mapping_never_shows_tokens(local_hub: LocalHub, tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "README.md").write_text("# private\n")
    url = local_hub.url
    hub.push_folder(folder, repo_id="alice/priv", token=local_hub.alice, private=True, endpoint=url)
    errors: list[Exception] = []
    alice, bob, wrong = local_hub.alice, local_hub.bob, "hf_wrong_token"

    def resolve(repo: str, revision: str | None = None, token: str | None = None) -> str:
        return hub.resolve_revision(repo, revision, token=token, endpoint=url)

    cases = [
        (AuthError, lambda: resolve("alice/priv")),
        (AuthError, lambda: resolve("alice/priv", token=wrong)),
        (NotFoundError, lambda: resolve("alice/priv", token=bob)),
        (NotFoundError, lambda: resolve("alice/absent")),
        (NotFoundError, lambda: resolve("alice/priv", "dev", token=alice)),
        (NotFoundError, lambda: hub.remote_config("alice/priv", token=alice, endpoint=url)),
        (AuthError, lambda: hub.push_folder(folder, repo_id="alice/x", token=wrong, endpoint=url)),
    ]
    for expected, action in cases:
        with pytest.raises(expected) as info:
            action()
        errors.append(info.value)
    assert "alice/absent" in str(errors[3])
    settings = HfApi(endpoint=url, token=alice)
    settings.update_repo_settings("alice/priv", private=False, gated="auto")
    with pytest.raises(GatedRepoAccessError, match="gated") as gated:
        hub.remote_config("alice/priv", token=bob, endpoint=url)
    errors.append(gated.value)
    for error in errors:
        text = f"{error} {error!r}"
        assert "secret" not in text
        assert "hf_wrong_token" not in text
        assert error.__cause__ is not None


def test_transient_failures_are_retried(local_hub: LocalHub, tmp_path: Path) -> None:
    folder = tmp_path / "flaky"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(_tiny_safetensors())
    push = dict(repo_id="alice/flaky", token=local_hub.alice, endpoint=local_hub.url, backoff=0.01)
    local_hub.control.fail_next("/api/repos/create", status=429)
    local_hub.control.fail_next("/commit/", status=503)
    result = hub.push_folder(folder, **push)
    assert local_hub.control.requests["POST /api/models/alice/flaky/commit/main"] == 2
    local_hub.control.fail_next("/api/models/alice/flaky", status=502, method="GET")
    assert hub.resolve_revision("alice/flaky", endpoint=local_hub.url) == result.commit_sha

    # a push that keeps failing leaves the previous revision intact; a later push completes
    (folder / "second.txt").write_text("v2")
    local_hub.control.fail_next("/commit/", status=500, count=10)
    with pytest.raises(HubError, match="unavailable"):
        hub.push_folder(folder, **push, exist_ok=True, retries=1)
    assert hub.resolve_revision("alice/flaky", endpoint=local_hub.url) == result.commit_sha
    local_hub.control.reset()
    final = hub.push_folder(folder, **push, exist_ok=True)
    files = HfApi(endpoint=local_hub.url).list_repo_files("alice/flaky", revision=final.commit_sha)
    assert {"model.safetensors", "second.txt"} <= set(files)
