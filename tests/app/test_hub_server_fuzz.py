"""Fuzzing the local Hub server's routes (the real app, in process): odd repo ids, ``..`` in
paths, huge or truncated bodies, bad JSON and NDJSON lines. Every answer is a 4xx with a
message or a success, never a 500; nothing is written outside the data dir; and every path a
repo lists can be downloaded (no ``..`` segments ever reach a commit)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from app.hub_server import create_app
from app.hub_server._input import bad_path

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
FUZZ_FEWER = settings(FUZZ, max_examples=50)  # routes that take several requests per example
TOKEN = "hf_alice_fuzz_token"
AUTH = {"authorization": f"Bearer {TOKEN}"}

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(),
              st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=10,
)  # fmt: skip
odd_names = st.one_of(
    st.sampled_from(["..", ".", "...", "a..b", "-x", "x" * 120, "%2e%2e", "a b", "alice", "repo"]),
    st.text(min_size=1, max_size=30).filter(lambda s: "/" not in s and "?" not in s),
)
odd_paths = st.one_of(
    st.sampled_from(["../../../../tmp/x", "./a", "a//b", "/etc/passwd", "a/../b", ".git/config",
                     "a\\..\\b", "ok.txt", "sub/deep.json", "a/./b", "..", "x\x00y", ""]),
    st.text(max_size=40),
)  # fmt: skip


@pytest.fixture
def hub(tmp_path: Path):
    data = tmp_path / "hub" / "data"
    app = create_app(data, tokens={TOKEN: "alice", "hf_bob_fuzz": "bob"})
    client = TestClient(app, raise_server_exceptions=False)
    assert client.post("/api/repos/create", json={"name": "repo"}, headers=AUTH).status_code == 200
    return client, tmp_path, data


def files_outside(root: Path, data: Path) -> set[Path]:
    return {p for p in root.rglob("*") if data not in p.parents and p != data}


def check(response: Any) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400 and response.request.method != "HEAD":
        assert response.json().get("error"), response.text[:300]


def commit_line(op: str, path: Any) -> bytes:
    value: dict[str, Any] = {"path": path}
    if op == "file":
        value.update(content=base64.b64encode(b"hello").decode(), encoding="base64")
    elif op == "lfsFile":
        value.update(oid="../" * 4 + "etc/passwd", size=5, algo="sha256")
    return json.dumps({"key": op, "value": value}).encode()


def test_json_routes_never_fail_with_500(hub):
    client, root, data = hub
    before = files_outside(root, data)
    routes = [("POST", "/api/repos/create"), ("DELETE", "/api/repos/delete"),
              ("PUT", "/api/models/alice/repo/settings"), ("POST", "/api/validate-yaml"),
              ("POST", "/api/models/alice/repo/preupload/main"),
              ("POST", "/alice/repo.git/info/lfs/objects/batch"),
              ("POST", "/alice/repo.git/info/lfs/verify"),
              ("POST", "/api/models/alice/repo/branch/dev")]  # fmt: skip

    @FUZZ
    @given(st.sampled_from(routes), st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=200),
        st.builds(lambda v, cut: json.dumps(v).encode()[:cut], json_values, st.integers(0, 40)),
    ))  # fmt: skip
    def run(route: tuple[str, str], body: bytes) -> None:
        method, url = route
        check(client.request(method, url, content=body, headers=AUTH))

    run()
    assert client.post("/api/repos/create", content=b"{" * 50, headers=AUTH).status_code == 400
    huge = json.dumps({"name": "x" * (2 << 20)}).encode()
    assert client.post("/api/repos/create", content=huge, headers=AUTH).status_code == 413
    assert files_outside(root, data) == before


def test_commits_refuse_bad_paths_and_bad_lines(hub):
    client, root, data = hub
    before = files_outside(root, data)
    header = json.dumps({"key": "header", "value": {"summary": "fuzz"}}).encode()
    ops = st.sampled_from(["file", "lfsFile", "deletedFile", "deletedFolder", "other"])

    @FUZZ_FEWER
    @given(st.lists(st.one_of(
        st.builds(commit_line, ops, st.one_of(odd_paths, json_values)),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=60),
    ), max_size=5), st.integers(0, 400))  # fmt: skip
    def run(lines: list[bytes], cut: int) -> None:
        body = b"\n".join([header, *lines])
        for payload in (body, body[:cut]):
            check(client.post("/api/models/alice/repo/commit/main", content=payload, headers=AUTH))

    run()
    tree = client.get("/api/models/alice/repo/tree/main?recursive=1").json()
    for entry in tree:
        assert bad_path(entry["path"]) is None, entry["path"]
    bad = b"\n".join([header, commit_line("file", "../../../../tmp/x")])
    answer = client.post("/api/models/alice/repo/commit/main", content=bad, headers=AUTH)
    assert answer.status_code == 400
    assert "Invalid path" in answer.json()["error"]
    assert files_outside(root, data) == before


def test_read_routes_with_odd_ids_and_paths(hub):
    client, root, data = hub
    before = files_outside(root, data)

    @FUZZ_FEWER
    @given(odd_names, odd_names, odd_paths, st.sampled_from(["main", "..", "x" * 50, "0" * 40]),
           st.sampled_from(["", "bytes=0-", "bytes=-5", "bytes=9-1", "bytes=a-b", "bytes=0-99999999999"]))  # fmt: skip  # noqa: E501
    def run(namespace: str, name: str, path: str, revision: str, byte_range: str) -> None:
        ns, nm, rev = quote(namespace, safe=""), quote(name, safe=""), quote(revision, safe="")
        p = quote(path, safe="/")
        headers = {**AUTH, "range": byte_range} if byte_range else AUTH
        for url in (f"/api/models/{ns}/{nm}", f"/api/models/{ns}/{nm}/revision/{rev}",
                    f"/api/models/{ns}/{nm}/tree/{rev}/{p}", f"/api/models/{ns}/{nm}/refs",
                    f"/{ns}/{nm}/resolve/{rev}/{p}", f"/api/datasets/{ns}/{nm}",
                    f"/api/models?search={quote(name)}&limit={quote(path)}"):  # fmt: skip
            check(client.get(url, headers=headers))
        check(client.head(f"/{ns}/{nm}/resolve/{rev}/{p}", headers=headers))

    run()
    assert files_outside(root, data) == before
