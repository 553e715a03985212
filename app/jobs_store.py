"""Job records in SQLite under the data dir, so the history survives restarts.

Every record names its owner, the identity that submitted it (`app.identity`): the web
handlers only ever read records through ``owner=``, so a job of another identity looks
exactly like a job that does not exist. Ids carry 128 random bits: they cannot be guessed.
The operator's CLI (``hubmerge jobs``) reads everything.

Tokens are never stored: nothing of a token reaches the database.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import sqlite3
import threading
import time
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
# columns added after the first release: (name, declaration); added to older databases
_ADDED = (
    ("owner", "TEXT"),
    ("expired", "REAL"),
    ("cancel_requested", "INTEGER NOT NULL DEFAULT 0"),
)


class JobLimitError(ValueError):
    """An identity already has as many queued or running jobs as the app allows."""


def new_job_id(kind: str) -> str:
    """``<kind>-<32 hex digits>``: 128 random bits, so ids cannot be guessed or enumerated."""
    return f"{kind}-{secrets.token_hex(16)}"


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
    owner: str | None = None
    expired: float | None = None  # when the sweep removed the output (HUBMERGE_KEEP_HOURS)
    cancel_requested: bool = False

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
        recover (`bool`, *optional*, defaults to `True`): mark jobs a dead process left
            queued or running as failed (`recover`); the operator's CLI passes `False`, since
            the app may be running beside it.
    """

    def __init__(self, path: Path | str, *, jobs_dir: Path, recover: bool = True) -> None:
        self.jobs_dir = Path(jobs_dir)
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute(_SCHEMA)
            columns = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
            for name, declaration in _ADDED:
                if name not in columns:
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")
            self._db.execute("CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created)")
        if recover:
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
        owner: str | None = None,
        recipe: str | None = None,
        params: dict[str, Any] | None = None,
        parent: str | None = None,
        max_active: int | None = None,
    ) -> JobRecord:
        """Insert a queued job.

        Args:
            owner (`str`, *optional*): the identity the job belongs to.
            max_active (`int`, *optional*): refuse when `owner` already has this many jobs
                queued or running (checked and inserted atomically).

        Raises:
            `JobLimitError`: `max_active` is reached.
        """
        record = JobRecord(
            id=new_job_id(kind), kind=kind, state="queued", created=time.time(), recipe=recipe,
            params=params or {}, parent=parent, owner=owner,
        )  # fmt: skip
        with self._lock:
            if max_active is not None and owner is not None:
                active = self._count_active(owner)
                if active >= max_active:
                    raise JobLimitError(
                        f"You already have {active} job(s) queued or running (the limit is "
                        f"{max_active}, HUBMERGE_MAX_QUEUED): wait for one to finish, or "
                        "cancel one."
                    )
            self._db.execute(
                "INSERT INTO jobs (id, kind, state, created, recipe, params, parent, owner) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (record.id, kind, "queued", record.created, recipe, json.dumps(record.params),
                 parent, owner),
            )  # fmt: skip
        return record

    def _count_active(self, owner: str) -> int:
        query = "SELECT COUNT(*) FROM jobs WHERE owner = ? AND state IN (?, ?)"
        return int(self._db.execute(query, (owner, *ACTIVE)).fetchone()[0])

    def count_active(self, owner: str) -> int:
        """Jobs of `owner` that are queued or running."""
        with self._lock:
            return self._count_active(owner)

    def update(self, job_id: str, **values: Any) -> None:
        if not values:
            return
        for key in ("params", "result"):
            if key in values and values[key] is not None:
                values[key] = json.dumps(values[key], default=str)
        for key in ("user_error", "cancel_requested"):
            if key in values:
                values[key] = int(bool(values[key]))
        columns = ", ".join(f"{key} = ?" for key in values)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*values.values(), job_id))

    def get(self, job_id: str) -> JobRecord | None:
        """Any job by id (the runner and the operator; web handlers use `get_owned`)."""
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _record(row) if row is not None else None

    def get_owned(self, job_id: str, owner: str) -> JobRecord | None:
        """The job `job_id` if it belongs to `owner`; None otherwise, as for an unknown id."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM jobs WHERE id = ? AND owner = ?", (job_id, owner)
            ).fetchone()
        return _record(row) if row is not None else None

    def list(
        self,
        *,
        limit: int = 50,
        kind: str | None = None,
        owner: str | None = None,
        state: str | None = None,
    ) -> list[JobRecord]:
        """Newest first; filtered by kind, owner and state where given (None: any)."""
        clauses, args = [], []
        for column, value in (("kind", kind), ("owner", owner), ("state", state)):
            if value:
                clauses.append(f"{column} = ?")
                args.append(value)
        query = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        query += " ORDER BY created DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*args, max(0, int(limit)))).fetchall()
        return [_record(row) for row in rows]

    def cancel_requests(self) -> list[str]:
        """Active jobs whose cancellation was asked for from outside the app (the CLI)."""
        query = "SELECT id FROM jobs WHERE cancel_requested = 1 AND state IN (?, ?)"
        with self._lock:
            return [row["id"] for row in self._db.execute(query, ACTIVE).fetchall()]

    def expire_outputs(self, *, older_than: float, now: float | None = None) -> list[str]:
        """Remove the outputs of jobs that finished more than `older_than` seconds ago.

        Their records stay, with ``expired`` set to when the output was removed.

        Returns:
            `list[str]`: the ids of the jobs whose output was removed.
        """
        now = time.time() if now is None else now
        query = (
            "SELECT id, output FROM jobs WHERE state IN (?, ?, ?) AND expired IS NULL "
            "AND COALESCE(finished, created) < ?"
        )
        with self._lock:
            rows = self._db.execute(query, (*FINISHED, now - older_than)).fetchall()
        removed = []
        for row in rows:
            folder = self.job_dir(row["id"])
            ours = bool(row["output"]) and _inside(Path(row["output"]), self.jobs_dir)
            if not folder.exists() and not ours:
                continue  # nothing on disk (a push's output is a repo URL)
            remove_output(folder)
            values: dict[str, Any] = {"expired": now}
            if ours:
                values["output"] = None
            self.update(row["id"], **values)
            removed.append(row["id"])
        if removed:
            logger.info("removed the outputs of %d job(s) older than %.1f h",
                        len(removed), older_than / 3600)  # fmt: skip
        return removed

    def delete(self, job_id: str) -> None:
        """Forget a finished job and remove its folder (the operator's ``prune``)."""
        remove_output(self.job_dir(job_id))
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False


def _record(row: sqlite3.Row) -> JobRecord:
    data = dict(row)
    data["params"] = json.loads(data["params"] or "{}")
    data["result"] = json.loads(data["result"]) if data["result"] else None
    data["user_error"] = bool(data["user_error"])
    data["cancel_requested"] = bool(data.get("cancel_requested"))
    return JobRecord(**data)


def remove_output(path: Path) -> None:
    """Remove a job's folder and any half-written ``*.tmp`` sibling folders inside it."""
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
