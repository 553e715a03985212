"""Jobs: every merge, evaluation, push or soup is a job with an id, state, timings and results.

Records live in SQLite under the data dir, so the history survives restarts. A job that was
queued or running when the app died is marked failed on the next start and its partial
output is removed. Work runs on a pool of `concurrency` threads; the web handlers only poll.

Tokens are never stored: the work function closes over the caller's token, and nothing of it
reaches the database, the log or another job.

>>> store = JobStore(":memory:", jobs_dir=Path("/tmp/jobs"))  # doctest: +SKIP
>>> runner = JobRunner(store, concurrency=1)  # doctest: +SKIP
>>> job_id = runner.submit("merge", lambda ctx: {"ok": True})  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")
INTERRUPTED = "the app stopped while this job was running; its partial output was removed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    recipe TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    result TEXT,
    error TEXT,
    user_error INTEGER NOT NULL DEFAULT 0,
    output TEXT,
    parent TEXT,
    log TEXT NOT NULL DEFAULT ''
)
"""


class JobCancelled(Exception):
    """Raised inside work functions when the job's cancel flag is set."""


@dataclass
class JobRecord:
    """One row of the job table (what `job_status` and `list_jobs` return)."""

    id: str
    kind: str
    state: str
    created: float
    started: float | None = None
    finished: float | None = None
    recipe: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: str | None = None
    user_error: bool = False
    output: str | None = None
    parent: str | None = None
    log: str = ""

    @property
    def seconds(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = None if self.seconds is None else round(self.seconds, 3)
        return data


class JobStore:
    """SQLite-backed job records; thread-safe.

    Args:
        path (`Path` or `":memory:"`): the database file (created with its folder).
        jobs_dir (`Path`): where job outputs live (``<jobs_dir>/<job id>/``).
    """

    def __init__(self, path: Path | str, *, jobs_dir: Path) -> None:
        self.jobs_dir = Path(jobs_dir)
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
        self.recover()

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def recover(self) -> list[str]:
        """Mark jobs left queued/running by a dead process as failed; remove their output."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE state IN (?, ?)", ACTIVE).fetchall()
        stale = [row["id"] for row in rows]
        for job_id in stale:
            remove_output(self.job_dir(job_id))
            self.update(job_id, state="failed", error=INTERRUPTED, finished=time.time())
            logger.warning("job %s was interrupted by a restart; marked failed", job_id)
        return stale

    def create(
        self,
        kind: str,
        *,
        recipe: str | None = None,
        params: dict[str, Any] | None = None,
        parent: str | None = None,
    ) -> JobRecord:
        record = JobRecord(
            id=f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}",
            kind=kind,
            state="queued",
            created=time.time(),
            recipe=recipe,
            params=params or {},
            parent=parent,
        )
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, kind, state, created, recipe, params, parent) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (record.id, kind, "queued", record.created, recipe, json.dumps(record.params),
                 parent),
            )  # fmt: skip
        return record

    def update(self, job_id: str, **values: Any) -> None:
        if not values:
            return
        for key in ("params", "result"):
            if key in values and values[key] is not None:
                values[key] = json.dumps(values[key], default=str)
        if "user_error" in values:
            values["user_error"] = int(bool(values["user_error"]))
        columns = ", ".join(f"{key} = ?" for key in values)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*values.values(), job_id))

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _record(row) if row is not None else None

    def list(self, *, limit: int = 50, kind: str | None = None) -> list[JobRecord]:
        query, args = "SELECT * FROM jobs", []
        if kind:
            query, args = query + " WHERE kind = ?", [kind]
        query += " ORDER BY created DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*args, limit)).fetchall()
        return [_record(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _record(row: sqlite3.Row) -> JobRecord:
    data = dict(row)
    data["params"] = json.loads(data["params"] or "{}")
    data["result"] = json.loads(data["result"]) if data["result"] else None
    data["user_error"] = bool(data["user_error"])
    return JobRecord(**data)


def remove_output(path: Path) -> None:
    """Remove a job's folder and any half-written ``*.tmp`` sibling folders inside it."""
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class LiveState:
    """What a running job reports, kept in memory (progress, ETA, log lines)."""

    stage: str = "queued"
    done: int = 0
    total: int = 0
    unit: str = ""
    stage_started: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)

    @property
    def eta(self) -> float | None:
        if self.done <= 0 or self.total <= self.done:
            return None
        elapsed = time.monotonic() - self.stage_started
        return elapsed / self.done * (self.total - self.done)

    def describe(self) -> str:
        text = self.stage
        if self.total:
            text += f": {self.done}/{self.total} {self.unit}".rstrip()
        if self.eta is not None:
            text += f", ETA {self.eta:.0f} s"
        return text


class JobContext:
    """Handed to a work function: its output folder, progress/log reporting, cancellation."""

    def __init__(self, job_id: str, output_dir: Path, live: LiveState, cancel: threading.Event):
        self.job_id = job_id
        self.output_dir = output_dir
        self.live = live
        self.cancel = cancel

    def progress(self, stage: str, done: int, total: int, unit: str = "") -> None:
        if stage != self.live.stage:
            self.live.stage, self.live.stage_started = stage, time.monotonic()
        self.live.done, self.live.total, self.live.unit = done, total, unit

    def log(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        self.live.lines.append(line)
        logger.info("[%s] %s", self.job_id, message)

    def check_cancelled(self) -> None:
        if self.cancel.is_set():
            raise JobCancelled(f"job {self.job_id} was cancelled")


Work = Callable[[JobContext], dict[str, Any]]


class JobRunner:
    """Runs work functions on `concurrency` threads and records every transition.

    Args:
        store (`JobStore`): where records go.
        concurrency (`int`): heavy jobs at once; others wait in state ``queued``.
        user_errors (`tuple[type[BaseException], ...]`): errors whose message is safe and
            useful to show as it is; anything else is logged with a traceback and reported
            as a generic failure naming the job id.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        concurrency: int = 1,
        user_errors: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.store = store
        self.user_errors = user_errors
        self._pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="job")
        self._live: dict[str, LiveState] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._done: dict[str, threading.Event] = {}

    def submit(
        self,
        kind: str,
        work: Work,
        *,
        recipe: str | None = None,
        params: dict[str, Any] | None = None,
        parent: str | None = None,
    ) -> str:
        record = self.store.create(kind, recipe=recipe, params=params, parent=parent)
        live, cancel, done = LiveState(), threading.Event(), threading.Event()
        self._live[record.id], self._cancel[record.id], self._done[record.id] = live, cancel, done
        context = JobContext(record.id, self.store.job_dir(record.id), live, cancel)
        self._pool.submit(self._run, context, work, done)
        return record.id

    def _run(self, ctx: JobContext, work: Work, done: threading.Event) -> None:
        try:
            if ctx.cancel.is_set():
                self._finish(ctx, "cancelled", error="cancelled before it started")
                return
            self.store.update(ctx.job_id, state="running", started=time.time())
            ctx.live.stage = "starting"
            ctx.output_dir.mkdir(parents=True, exist_ok=True)
            try:
                result = work(ctx)
            except JobCancelled:
                self._finish(ctx, "cancelled", error="cancelled; nothing was kept")
            except BaseException as err:
                if ctx.cancel.is_set():
                    self._finish(ctx, "cancelled", error="cancelled; nothing was kept")
                elif isinstance(err, self.user_errors):
                    ctx.log(f"error: {err}")
                    self._finish(ctx, "failed", error=str(err), user_error=True)
                else:
                    logger.exception("job %s failed", ctx.job_id)
                    ctx.log("error: internal failure (details in the server log)")
                    message = f"job {ctx.job_id} failed unexpectedly; the server log has details"
                    self._finish(ctx, "failed", error=message)
            else:
                output = result.pop("output", None) if isinstance(result, dict) else None
                self._finish(ctx, "succeeded", result=result, output=output)
        finally:
            done.set()

    def _finish(self, ctx: JobContext, state: str, **values: Any) -> None:
        if state != "succeeded":
            remove_output(ctx.output_dir)
            values["output"] = None
        ctx.live.stage = state
        self.store.update(
            ctx.job_id,
            state=state,
            finished=time.time(),
            log="\n".join(ctx.live.lines),
            **values,
        )

    def cancel(self, job_id: str) -> bool:
        """Ask a queued or running job to stop; returns whether it was still active."""
        event = self._cancel.get(job_id)
        if event is None or self._done[job_id].is_set():
            return False
        event.set()
        return True

    def live(self, job_id: str) -> LiveState | None:
        return self._live.get(job_id)

    def wait(self, job_id: str, timeout: float | None = None) -> JobRecord | None:
        event = self._done.get(job_id)
        if event is not None:
            event.wait(timeout)
        return self.store.get(job_id)

    def is_done(self, job_id: str) -> bool:
        event = self._done.get(job_id)
        return event is None or event.is_set()

    def shutdown(self, *, cancel: bool = True) -> None:
        if cancel:
            for event in self._cancel.values():
                event.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
