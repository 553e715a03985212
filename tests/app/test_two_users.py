"""Two users share one app: the project's Hub server with alice's and bob's tokens, the app
(``python -m app``, listening on 0.0.0.0 as in a container) pointed at it, and real
`gradio_client` clients. Alice's merge of her private models is invisible to bob and to
anonymous clients through every job endpoint; bob pushing alice's job id is refused like an
unknown id; alice's own calls work from any client; anonymous sessions do not see each
other's jobs; local folders are refused by an app on 0.0.0.0."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("gradio_client")
from gradio_client import Client
from gradio_client.exceptions import AppError

from tests.app.conftest import ROOT, app_env, free_port
from tests.hub_fixtures import ALICE, BOB, point_client_at, save_tiny_llama, start_hub

pytestmark = pytest.mark.slow

UNKNOWN = "merge-" + "0" * 32


def recipe(*models: str) -> str:
    base, *others = models
    lines = "".join(f"  - model: {m}\n    parameters: {{weight: 0.5}}\n" for m in others)
    return f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n{lines}"


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from huggingface_hub import HfApi

    root = tmp_path_factory.mktemp("two-users")
    with start_hub(root / "hub") as (hub_url, _control), pytest.MonkeyPatch.context() as mp:
        point_client_at(hub_url, root / "hf-home", mp)  # this process talks to it too
        api = HfApi(endpoint=hub_url, token=ALICE)
        for seed, name in enumerate(["base", "ft-a", "ft-b"]):
            folder = save_tiny_llama(root / "models" / name, seed=seed)
            for repo, private in [(f"alice/{name}", True), (f"alice/public-{name}", False)]:
                api.create_repo(repo, private=private)
                api.upload_folder(folder_path=folder, repo_id=repo)
        data_dir, port = root / "app-data", free_port()
        data_dir.mkdir()
        log = root / "app.log"
        env = app_env(data_dir, port, HF_ENDPOINT=hub_url, HUBMERGE_HOST="0.0.0.0")
        process = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env,
                                   stdout=log.open("w"), stderr=subprocess.STDOUT)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_for(url, process, log)
            yield {"url": url, "hub": hub_url, "data_dir": data_dir, "log": log,
                   "models": root / "models"}  # fmt: skip
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the app exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/gradio_api/info", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the app did not start:\n{log.read_text()[-3000:]}")


def client(app: dict) -> Client:
    return Client(app["url"], verbose=False)


def merge(c: Client, text: str, token: str) -> tuple[str, dict]:
    job_id, _log, record = c.predict(text, token, "", "loss", api_name="/merge")
    return job_id, record


def answers(c: Client, job_id: str, token: str) -> dict[str, str]:
    """What every job endpoint tells this client about `job_id` (errors as their text)."""

    def call(*args, api_name: str) -> str:
        try:
            return str(c.predict(*args, api_name=api_name))
        except AppError as err:
            return f"error: {err}"

    rows = c.predict(50, token, api_name="/list_jobs")["data"]
    return {
        "listed": str(any(row[0] == job_id for row in rows)),
        "job_status": call(job_id, token, api_name="/job_status"),
        "cancel": call(job_id, token, api_name="/cancel"),
        "card_preview": call(job_id, token, api_name="/card_preview"),
        "evaluate": call(job_id, "quick", "", 2, False, token, api_name="/evaluate"),
        "push": call(job_id, "bob/stolen", False, False, token, api_name="/push"),
    }


def _without(text: dict[str, str], job_id: str) -> dict[str, str]:
    return {key: value.replace(job_id, "ID") for key, value in text.items()}


@pytest.fixture(scope="module")
def alices_merge(shared_app) -> tuple[str, dict]:
    private = recipe("alice/base", "alice/ft-a", "alice/ft-b")
    return merge(client(shared_app), private, ALICE)


def test_alices_private_merge_is_invisible_to_bob_and_to_anonymous(shared_app, alices_merge):
    job_id, record = alices_merge
    assert record["state"] == "succeeded", record
    for token in (BOB, ""):
        other = client(shared_app)
        theirs, unknown = answers(other, job_id, token), answers(other, UNKNOWN, token)
        assert _without(theirs, job_id) == _without(unknown, UNKNOWN)  # indistinguishable
        assert theirs["listed"] == "False"
        assert theirs["job_status"].startswith("error: No job with id")
        assert theirs["cancel"].startswith("no job")
        assert "No merge job" in theirs["card_preview"]
        assert "No merge job" in theirs["evaluate"]
        assert ("No merge job" if token else "Paste a Hub write token") in theirs["push"]
    from huggingface_hub import HfApi

    assert not HfApi(endpoint=shared_app["hub"], token=BOB).repo_exists("bob/stolen")


def test_alices_own_calls_work_from_any_client(shared_app, alices_merge):
    job_id, _ = alices_merge
    other_session = client(shared_app)  # a new Client is a new session: the token is who she is
    status = other_session.predict(job_id, ALICE, api_name="/job_status")
    assert status["state"] == "succeeded"
    assert "owner" not in status
    rows = other_session.predict(50, ALICE, api_name="/list_jobs")["data"]
    assert job_id in [row[0] for row in rows]
    card = other_session.predict(job_id, ALICE, api_name="/card_preview")
    assert "task_arithmetic" in card
    push_id, commit_url, push = other_session.predict(
        job_id, "alice/merged", True, False, ALICE, api_name="/push"
    )
    assert push["state"] == "succeeded", push
    assert "/alice/merged/commit/" in commit_url
    assert push_id.startswith("push-")
    assert other_session.predict(job_id, ALICE, api_name="/cancel") == f"{job_id} is succeeded"


def test_bob_cannot_push_alices_job_even_to_his_own_repo(shared_app, alices_merge):
    job_id, _ = alices_merge
    bob = client(shared_app)
    with pytest.raises(AppError, match=f"No merge job '{job_id}'"):
        bob.predict(job_id, "bob/stolen", False, False, BOB, api_name="/push")
    with pytest.raises(AppError, match=f"No merge job '{UNKNOWN}'"):
        bob.predict(UNKNOWN, "bob/stolen", False, False, BOB, api_name="/push")


def test_anonymous_sessions_do_not_see_each_other(shared_app):
    public = recipe("alice/public-base", "alice/public-ft-a", "alice/public-ft-b")
    first, second = client(shared_app), client(shared_app)
    job_id, record = merge(first, public, "")
    assert record["state"] == "succeeded", record
    assert [row[0] for row in first.predict(50, "", api_name="/list_jobs")["data"]] == [job_id]
    assert first.predict(job_id, "", api_name="/job_status")["id"] == job_id
    assert second.predict(50, "", api_name="/list_jobs")["data"] == []
    with pytest.raises(AppError, match="No job with id"):
        second.predict(job_id, "", api_name="/job_status")


def test_local_folders_are_refused_on_0_0_0_0(shared_app, alices_merge):
    c = client(shared_app)
    folders = shared_app["models"]
    outside = recipe(str(folders / "base"), str(folders / "ft-a"))
    with pytest.raises(AppError, match="HUBMERGE_ALLOW_LOCAL_PATHS=1"):
        c.predict(outside, ALICE, api_name="/check")
    merged = alices_merge[1]["output"]
    inside = recipe(str(folders / "base"), merged)
    with pytest.raises(AppError, match="not accepted"):
        merge(c, inside, ALICE)


def test_mcp_callers_do_not_share_jobs(shared_app):
    """Gradio's MCP server relays every tool call through one client of its own (one Gradio
    session) and keeps no MCP sessions: a tokenless call owns its job alone, and a caller
    with a token finds their jobs again from any MCP session."""
    pytest.importorskip("mcp")
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    public = recipe("alice/public-base", "alice/public-ft-a")

    async def status(session: ClientSession, job_id: str, token: str) -> bool:
        answer = await session.call_tool("job_status", {"job_id": job_id, "token": token})
        return not answer.isError

    async def main() -> dict[str, bool]:
        url = f"{shared_app['url']}/gradio_api/mcp/"
        async with (
            streamable_http_client(url) as (read_a, write_a, _),
            ClientSession(read_a, write_a) as first,
            streamable_http_client(url) as (read_b, write_b, _),
            ClientSession(read_b, write_b) as second,
        ):
            await first.initialize()
            await second.initialize()
            ids = {}
            for who, token in (("anonymous", ""), ("alice", ALICE)):
                merged = await first.call_tool("merge", {"recipe": public, "token": token})
                assert not merged.isError, merged.content
                text = " ".join(getattr(c, "text", "") for c in merged.content)
                ids[who] = re.search(r"merge-[0-9a-f]{32}", text).group(0)
            return {
                "anonymous, same MCP client": await status(first, ids["anonymous"], ""),
                "anonymous, other MCP client": await status(second, ids["anonymous"], ""),
                "alice's, other MCP client, no token": await status(second, ids["alice"], ""),
                "alice's, other MCP client, her token": await status(second, ids["alice"], ALICE),
            }

    seen = asyncio.run(main())
    assert seen == {
        "anonymous, same MCP client": False,
        "anonymous, other MCP client": False,
        "alice's, other MCP client, no token": False,
        "alice's, other MCP client, her token": True,
    }
