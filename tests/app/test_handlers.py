"""`app.handlers` called directly (no launched app)."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import pytest

from app.handler_support import public
from app.handlers import JOB_COLUMNS, Handlers, user_errors
from app.jobs import JobRunner, JobStore
from app.settings import Settings


@pytest.fixture
def handlers(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data", hub_endpoint="http://127.0.0.1:9")
    store = JobStore(settings.jobs_db, jobs_dir=settings.jobs_dir)
    runner = JobRunner(store, user_errors=user_errors())
    yield Handlers(settings, runner)
    runner.shutdown()


def test_list_jobs_rows_are_the_records_columns(handlers: Handlers) -> None:
    h, owner = handlers, "session:" + "a" * 32
    done = h.store.create("merge", owner=owner, recipe="merge_method: linear\n")
    h.store.update(done.id, state="succeeded", started=time.time() - 2.5, finished=time.time(),
                   output="/out/merged", result={"tensors": 21, "table": "x" * 10_000},
                   log="many lines\n" * 100)  # fmt: skip
    failed = h.store.create("evaluate", owner=owner, parent=done.id)
    h.store.update(failed.id, state="failed", error="no such task")
    queued = h.store.create("push", owner=owner)
    h.store.create("merge", owner="user:someone-else")
    rows = h.list_jobs(10, "", None, gr.Request(session_hash="a-tab"))  # not this session
    assert rows == []
    h.identities.resolve = lambda token, session: owner  # type: ignore[method-assign]
    rows = h.list_jobs(10, "", None, gr.Request(session_hash="tab"))
    assert [row[0] for row in rows] == [queued.id, failed.id, done.id]  # newest first
    for row in rows:
        record = h.store.get(row[0])
        assert record is not None
        data = public(record)
        data["created"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        assert row == [data[c] if data[c] is not None else "" for c in JOB_COLUMNS]
    assert rows[2][JOB_COLUMNS.index("seconds")] == pytest.approx(2.5, abs=0.1)
    assert rows[1][JOB_COLUMNS.index("error")] == "no such task"
    assert rows[0][JOB_COLUMNS.index("output")] == ""
