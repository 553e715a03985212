"""Every job endpoint acts only on the caller's own jobs (handlers called directly, identities
resolved by whoami against the local Hub with two users). Another identity's job answers
exactly like an unknown id; the launched-app version is tests/app/test_two_users.py."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import pytest

from app.handlers import Handlers, user_errors
from app.jobs import JobRunner, JobStore
from app.settings import Settings
from tests import hub_fixtures

local_hub = hub_fixtures.local_hub
RECIPE = "merge_method: linear\nmodels:\n  - model: alice/a\n  - model: alice/b\n"


def request(session: str) -> gr.Request:
    return gr.Request(session_hash=session)


@pytest.fixture
def handlers(local_hub, tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data", hub_endpoint=local_hub.url)
    store = JobStore(settings.jobs_db, jobs_dir=settings.jobs_dir)
    runner = JobRunner(store, user_errors=user_errors(), max_queued=3)
    yield Handlers(settings, runner)
    runner.shutdown()


def finished_merge(h: Handlers, owner: str) -> str:
    """A succeeded merge job of `owner` with an output folder and a card."""
    record = h.store.create("merge", owner=owner, recipe=RECIPE)
    folder = h.store.job_dir(record.id) / "merged"
    folder.mkdir(parents=True)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# merged\n")
    h.store.update(record.id, state="succeeded", finished=time.time(), output=str(folder))
    return record.id


def answers(h: Handlers, job_id: str, token: str, session: str) -> dict[str, str]:
    """What each job endpoint says about `job_id` to this caller (errors as their message)."""
    req = request(session)

    def run(fn, *args) -> str:
        try:
            out = fn(*args)
            if hasattr(out, "__next__"):
                out = list(out)
            return str(out)
        except gr.Error as err:
            return f"error: {err.message}"

    return {
        "job_status": run(h.job_status, job_id, token, None, req),
        "cancel": run(h.cancel, job_id, token, None, req),
        "card_preview": run(h.card_preview, job_id, token, None, req),
        "evaluate": run(h.evaluate, job_id, "demo", "", 5, False, token, None, req),
        "push": run(h.push, job_id, "bob/stolen", False, False, token, None, req),
    }


def test_another_identitys_job_looks_unknown(handlers, local_hub):
    h = handlers
    job_id = finished_merge(h, "user:alice")
    unknown = "merge-" + "0" * 32
    for token, session in [(local_hub.bob, "bob-tab"), ("", "anonymous-tab")]:
        theirs = answers(h, job_id, token, session)
        nothing = answers(h, unknown, token, session)
        assert {k: v.replace(job_id, "ID") for k, v in theirs.items()} == {
            k: v.replace(unknown, "ID") for k, v in nothing.items()
        }
        refusals = ("error: No", "no job", "⚠️ No", "error: Paste a Hub write token")
        assert all(v.startswith(refusals) for v in theirs.values()), theirs
        assert h.list_jobs(50, token, None, request(session)) == []
    assert h.store.get(job_id).state == "succeeded"  # nothing was cancelled or pushed


def test_the_owner_sees_their_job_from_any_session(handlers, local_hub):
    h = handlers
    job_id = finished_merge(h, "user:alice")
    for session in ("tab-1", "script"):
        status = h.job_status(job_id, local_hub.alice, None, request(session))
        assert status["id"] == job_id
        assert "owner" not in status
        rows = h.list_jobs(50, local_hub.alice, None, request(session))
        assert [row[0] for row in rows] == [job_id]
        assert "# merged" in h.card_preview(job_id, local_hub.alice, None, request(session))
    assert h.cancel(job_id, local_hub.alice, None, request("tab-1")) == f"{job_id} is succeeded"


def test_anonymous_sessions_are_separate(handlers):
    h = handlers
    mine = finished_merge(h, h.caller("", None, request("tab-a")))
    assert [r[0] for r in h.list_jobs(50, "", None, request("tab-a"))] == [mine]
    assert h.list_jobs(50, "", None, request("tab-b")) == []
    with pytest.raises(gr.Error, match="No job with id"):
        h.job_status(mine, "", None, request("tab-b"))


def test_queue_limit_is_a_plain_error(handlers, local_hub):
    h = handlers
    for _ in range(3):
        h.store.create("merge", owner="user:alice")  # queued, never run
    with pytest.raises(gr.Error, match="HUBMERGE_MAX_QUEUED"):
        next(h.merge(RECIPE, local_hub.alice, "", "loss", None, request("tab")))


def test_an_oauth_sign_in_is_the_same_user_as_their_token(handlers, local_hub):
    """On Spaces the signed-in user's OAuth token stands in for the token field."""
    h = handlers
    job_id = finished_merge(h, h.caller(local_hub.alice, None, request("script")))
    signed_in = gr.OAuthToken(token=local_hub.alice, scope="openid", expires_at=0)
    assert h.caller("", signed_in, request("browser")) == "user:alice"
    assert h.job_status(job_id, "", signed_in, request("browser"))["id"] == job_id
