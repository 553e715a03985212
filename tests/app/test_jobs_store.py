"""Job records: owners, unguessable ids, the per-identity queue limit, the output sweep,
cancellations asked for from outside the app, and migrating an older database."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from app.jobs import JobLimitError, JobRunner, JobStore


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite", jobs_dir=tmp_path / "jobs")


def test_ids_carry_128_random_bits(store):
    ids = {store.create("merge").id for _ in range(200)}
    assert len(ids) == 200
    for job_id in ids:
        assert re.fullmatch(r"merge-[0-9a-f]{32}", job_id)


def test_records_are_read_through_their_owner(store):
    mine = store.create("merge", owner="user:alice")
    store.create("merge", owner="user:bob")
    assert store.get_owned(mine.id, "user:alice").id == mine.id
    assert store.get_owned(mine.id, "user:bob") is None
    assert store.get_owned("merge-" + "0" * 32, "user:alice") is None
    assert [r.id for r in store.list(owner="user:alice")] == [mine.id]
    assert len(store.list()) == 2  # the operator sees everything


def test_queue_limit_per_identity(store):
    gate = threading.Event()
    runner = JobRunner(store, max_queued=2)
    first = runner.submit("merge", lambda ctx: gate.wait(10) and {}, owner="user:alice")
    runner.submit("merge", lambda ctx: {}, owner="user:alice")
    with pytest.raises(JobLimitError, match=r"2 job\(s\) queued or running.*HUBMERGE_MAX_QUEUED"):
        runner.submit("merge", lambda ctx: {}, owner="user:alice")
    other = runner.submit("merge", lambda ctx: {}, owner="user:bob")  # others are not blocked
    gate.set()
    assert runner.wait(first, timeout=10).state == "succeeded"
    assert runner.wait(other, timeout=10).state == "succeeded"
    deadline = time.monotonic() + 10
    while store.count_active("user:alice") and time.monotonic() < deadline:
        time.sleep(0.05)
    runner.wait(runner.submit("merge", lambda ctx: {}, owner="user:alice"), timeout=10)
    runner.shutdown()


def test_sweep_removes_old_outputs_and_says_so(store):
    runner = JobRunner(store, keep_hours=1)

    def work(ctx):
        (ctx.output_dir / "merged").mkdir()
        return {"output": str(ctx.output_dir / "merged")}

    old = runner.wait(runner.submit("merge", work, owner="user:alice"), timeout=10)
    push = store.create("push", owner="user:alice")
    store.update(push.id, state="succeeded", finished=time.time(), output="http://hub/a/b")
    assert runner.sweep() == []  # young outputs stay
    removed = runner.sweep(now=time.time() + 2 * 3600)
    assert set(removed) == {old.id}
    record = store.get(old.id)
    assert record.expired is not None
    assert record.output is None
    assert not store.job_dir(old.id).exists()
    assert store.get(push.id).output == "http://hub/a/b"  # not a folder of ours: untouched
    assert runner.sweep(now=time.time() + 3 * 3600) == []  # once only
    runner.shutdown()


def test_cancel_requested_in_the_database_stops_the_job(store, tmp_path):
    runner = JobRunner(store)
    started = threading.Event()

    def slow(ctx):
        started.set()
        while True:
            ctx.check_cancelled()
            time.sleep(0.01)

    job_id = runner.submit("merge", slow, owner="user:alice")
    assert started.wait(10)
    other = JobStore(tmp_path / "jobs.sqlite", jobs_dir=tmp_path / "jobs", recover=False)
    assert other.get(job_id).state == "running"  # the CLI's store leaves running jobs alone
    other.update(job_id, cancel_requested=True)
    assert runner.wait(job_id, timeout=10).state == "cancelled"
    runner.shutdown()


def test_an_older_database_gains_the_new_columns(tmp_path):
    db = tmp_path / "jobs.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, "
            "created REAL NOT NULL, started REAL, finished REAL, recipe TEXT, params TEXT NOT "
            "NULL DEFAULT '{}', result TEXT, error TEXT, user_error INTEGER NOT NULL DEFAULT 0, "
            "output TEXT, parent TEXT, log TEXT NOT NULL DEFAULT '')"
        )
        conn.execute("INSERT INTO jobs (id, kind, state, created) VALUES "
                     "('merge-20240101-000000-abcdef', 'merge', 'succeeded', 1.0)")  # fmt: skip
    store = JobStore(db, jobs_dir=tmp_path / "jobs")
    old = store.get("merge-20240101-000000-abcdef")
    assert old.owner is None  # nobody owns it: invisible over the web, the operator sees it
    assert store.list(owner="user:alice") == []
    assert store.create("merge", owner="user:alice").owner == "user:alice"
