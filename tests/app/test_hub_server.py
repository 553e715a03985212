"""The local Hub server, driven by the real `huggingface_hub` client over HTTP."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

hf = pytest.importorskip("huggingface_hub")
from huggingface_hub import HfApi, snapshot_download  # noqa: E402
from huggingface_hub.errors import (  # noqa: E402
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests import hub_fixtures  # noqa: E402
from tests.hub_fixtures import LocalHub, start_hub  # noqa: E402

# fixtures (until tests/conftest.py lists "tests.hub_fixtures" in pytest_plugins)
local_hub = hub_fixtures.local_hub
tiny_llama_dir = hub_fixtures.tiny_llama_dir

BIG = 10_500_000  # above the 10 MB limit: goes through git-lfs


def _folder(root: Path, *, big: bool = False, text: str = "hello") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("---\nlicense: mit\ntags: [merge]\n---\n# Test model\n")
    (root / "notes.txt").write_text(text)
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "deep.json").write_text('{"a": 1}')
    if big:
        (root / "big.bin").write_bytes(os.urandom(BIG))
    return root


def _api(hub: LocalHub, token: str | None = None) -> HfApi:
    return HfApi(endpoint=hub.url, token=token if token else False)


def test_upload_download_roundtrip_with_lfs(local_hub: LocalHub, tmp_path: Path) -> None:
    api = _api(local_hub, local_hub.alice)
    url = api.create_repo("alice/roundtrip")
    assert url.repo_id == "alice/roundtrip"
    folder = _folder(tmp_path / "src", big=True)
    commit = api.upload_folder(folder_path=folder, repo_id="alice/roundtrip")
    assert len(commit.oid) == 40

    info = api.model_info("alice/roundtrip", files_metadata=True)
    assert info.sha == commit.oid
    assert info.card_data.license == "mit"
    assert "merge" in info.tags
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) >= {"README.md", "notes.txt", "sub/deep.json", "big.bin"}
    big_sha = hashlib.sha256((folder / "big.bin").read_bytes()).hexdigest()
    assert siblings["big.bin"].lfs.sha256 == big_sha
    assert siblings["notes.txt"].lfs is None

    tree = {e.path: e for e in api.list_repo_tree("alice/roundtrip", recursive=True)}
    assert tree["big.bin"].lfs.size == BIG
    assert tree["big.bin"].lfs.pointer_size > 0
    assert api.list_repo_refs("alice/roundtrip").branches[0].target_commit == commit.oid

    local = Path(snapshot_download("alice/roundtrip", endpoint=local_hub.url, token=False))
    for name in ("big.bin", "notes.txt", "sub/deep.json", "README.md"):
        assert (local / name).read_bytes() == (folder / name).read_bytes()


def test_create_conflict_and_auth_rules(local_hub: LocalHub) -> None:
    alice, bob, anonymous = (
        _api(local_hub, local_hub.alice),
        _api(local_hub, local_hub.bob),
        _api(local_hub),
    )
    alice.create_repo("alice/secret", private=True)
    with pytest.raises(HfHubHTTPError) as conflict:
        alice.create_repo("alice/secret")
    assert conflict.value.response.status_code == 409
    assert conflict.value.response.json()["url"].endswith("/alice/secret")
    assert alice.create_repo("alice/secret", exist_ok=True).repo_id == "alice/secret"

    assert alice.model_info("alice/secret").private is True
    with pytest.raises(RepositoryNotFoundError) as anon:
        anonymous.model_info("alice/secret")
    assert anon.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError) as other:
        bob.model_info("alice/secret")
    assert other.value.response.status_code == 404
    with pytest.raises(HfHubHTTPError) as wrong:
        _api(local_hub, "hf_wrong").model_info("alice/secret")
    assert wrong.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as write:
        anonymous.create_repo("alice/other")
    assert write.value.response.status_code == 401
    alice.create_repo("alice/public")
    with pytest.raises(HfHubHTTPError) as forbidden:
        bob.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/public")
    assert forbidden.value.response.status_code == 403
    assert alice.whoami()["name"] == "alice"


def test_not_found_codes_and_range_reads(local_hub: LocalHub) -> None:
    api = _api(local_hub, local_hub.alice)
    api.create_repo("alice/files")
    payload = bytes(range(256)) * 4
    api.upload_file(path_or_fileobj=payload, path_in_repo="data.txt", repo_id="alice/files")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/missing")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("alice/files", revision="nope")
    with pytest.raises(RemoteEntryNotFoundError):
        hf.hf_hub_download("alice/files", "absent.txt", endpoint=local_hub.url, token=False)

    session = hf.utils.get_session()
    url = hf.hf_hub_url("alice/files", "data.txt", endpoint=local_hub.url)
    head = session.head(url)
    assert head.headers["X-Repo-Commit"] == api.model_info("alice/files").sha
    assert int(head.headers["Content-Length"]) == len(payload)
    assert head.headers["ETag"]
    part = session.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.content == payload[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(payload)}"
    assert session.get(url, headers={"Range": "bytes=-4"}).content == payload[-4:]
    assert session.get(url, headers={"Range": f"bytes={len(payload)}-"}).status_code == 416


def test_failed_commit_leaves_previous_revision_intact(local_hub: LocalHub, tmp_path) -> None:
    api = _api(local_hub, local_hub.alice)
    api.create_repo("alice/atomic")
    first = api.upload_folder(folder_path=_folder(tmp_path / "v1"), repo_id="alice/atomic")
    local_hub.control.fail_next(r"/commit/", status=500)
    v2 = _folder(tmp_path / "v2", text="second version")
    (v2 / "new.txt").write_text("new")
    with pytest.raises(HfHubHTTPError):
        api.upload_folder(folder_path=v2, repo_id="alice/atomic")
    info = api.model_info("alice/atomic")
    assert info.sha == first.oid
    assert "new.txt" not in {s.rfilename for s in info.siblings}

    second = api.upload_folder(folder_path=v2, repo_id="alice/atomic")
    assert second.oid != first.oid
    path = hf.hf_hub_download("alice/atomic", "notes.txt", endpoint=local_hub.url, token=False)
    assert Path(path).read_text() == "second version"
    old = hf.hf_hub_download(
        "alice/atomic", "notes.txt", revision=first.oid, endpoint=local_hub.url, token=False
    )
    assert Path(old).read_text() == "hello"


def test_concurrent_commits_are_safe(local_hub: LocalHub) -> None:
    api = _api(local_hub, local_hub.alice)
    for name in ("alice/one", "alice/two"):
        api.create_repo(name)
    errors: list[BaseException] = []

    def upload(repo: str, index: int) -> None:
        try:
            for step in range(3):
                data = f"{repo} {index} {step}".encode()
                api.upload_file(
                    path_or_fileobj=data, path_in_repo=f"f{index}-{step}.txt", repo_id=repo
                )
        except BaseException as e:  # collected and re-raised in the main thread
            errors.append(e)

    jobs = [("alice/one", 0), ("alice/one", 1), ("alice/two", 0)]
    threads = [threading.Thread(target=upload, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    one = {s.rfilename for s in api.model_info("alice/one").siblings}
    assert {f"f{i}-{s}.txt" for i in (0, 1) for s in range(3)} <= one
    assert len(api.list_repo_refs("alice/two").branches) == 1


def test_data_survives_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    with start_hub(data) as (url, _):
        hub_fixtures.point_client_at(url, tmp_path / "home", monkeypatch)
        api = HfApi(endpoint=url, token="hf_alice_secret_token")
        api.create_repo("alice/durable", private=True)
        commit = api.upload_file(
            path_or_fileobj=b"kept", path_in_repo="k.txt", repo_id="alice/durable"
        )
    with start_hub(data) as (url, _):
        api = HfApi(endpoint=url, token="hf_alice_secret_token")
        info = api.model_info("alice/durable")
        assert info.sha == commit.oid
        assert info.private
        path = hf.hf_hub_download(
            "alice/durable", "k.txt", endpoint=url, token="hf_alice_secret_token",
            cache_dir=tmp_path / "cache",
        )  # fmt: skip
        assert Path(path).read_bytes() == b"kept"


def test_list_models_and_gating(local_hub: LocalHub) -> None:
    alice, bob = _api(local_hub, local_hub.alice), _api(local_hub, local_hub.bob)
    alice.create_repo("alice/llama-merge")
    alice.create_repo("alice/hidden-llama", private=True)
    bob.create_repo("bob/llama-tune")
    names = {m.id for m in bob.list_models(search="llama")}
    assert names == {"alice/llama-merge", "bob/llama-tune"}
    assert {m.id for m in alice.list_models(author="alice")} == {
        "alice/llama-merge",
        "alice/hidden-llama",
    }
    alice.upload_file(path_or_fileobj=b"w", path_in_repo="w.txt", repo_id="alice/llama-merge")
    alice.update_repo_settings("alice/llama-merge", gated="auto")
    with pytest.raises(GatedRepoError):
        hf.hf_hub_download(
            "alice/llama-merge", "w.txt", endpoint=local_hub.url, token=local_hub.bob
        )
    bob.delete_repo("bob/llama-tune")
    assert not bob.repo_exists("bob/llama-tune")


def test_transformers_push_and_from_pretrained(local_hub: LocalHub, tiny_llama_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model.push_to_hub("alice/tiny-llama", token=local_hub.alice, private=True)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        "alice/tiny-llama", token=local_hub.alice
    )
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_listening_socket_is_tcp_so_answers_are_not_held_back() -> None:
    """asyncio sets TCP_NODELAY only on sockets whose ``proto`` is IPPROTO_TCP; without it
    each answer on a keep-alive connection waited ~40 ms (Nagle against delayed ACKs)."""
    import socket

    from app.hub_server.server import _bind

    sock = _bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_commit_metadata_is_derived_once_per_commit(
    local_hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.hub_server import _cards

    reads: list[str] = []
    real = _cards.safetensors_summary

    def counting(store, commit):  # type: ignore[no-untyped-def]
        reads.append(commit.sha)
        return real(store, commit)

    monkeypatch.setattr(_cards, "safetensors_summary", counting)
    api = _api(local_hub, local_hub.alice)
    api.create_repo("alice/meta")
    folder = _folder(tmp_path / "src", text="one")
    first = api.upload_folder(folder_path=folder, repo_id="alice/meta").oid
    for _ in range(3):
        assert api.model_info("alice/meta").card_data.license == "mit"
    assert {s.id for s in api.list_models(search="meta")} == {"alice/meta"}
    assert reads == [first]
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Changed\n")
    second = api.upload_folder(folder_path=folder, repo_id="alice/meta").oid
    assert api.model_info("alice/meta").card_data.license == "apache-2.0"  # a new commit
    assert api.model_info("alice/meta", revision=first).card_data.license == "mit"
    assert reads == [first, second]
