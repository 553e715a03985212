"""Jobs: every merge, evaluation, push or soup is a job with an id, state, timings and results.

Records live in SQLite under the data dir (`app.jobs_store`), so the history survives
restarts. A job that was queued or running when the app died is marked failed on the next
start and its partial output is removed. Work runs on a pool of `concurrency` threads; the
web handlers only poll. Each job belongs to the identity that submitted it (`app.identity`),
which may have at most `max_queued` jobs queued or running at once.

A maintenance thread applies cancellations asked for from the operator's CLI and, with
`keep_hours`, removes job outputs older than that (their records say so).

Tokens are never stored: the work function closes over the caller's token, and nothing of it
reaches the database, the log or another job.

>>> store = JobStore(":memory:", jobs_dir=Path("/tmp/jobs"))  # doctest: +SKIP
>>> runner = JobRunner(store, concurrency=1)  # doctest: +SKIP
>>> job_id = runner.submit("merge", lambda ctx: {"ok": True}, owner="user:alice")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.jobs_store import (
    ACTIVE,
    FINISHED,
    INTERRUPTED,
    JobLimitError,
    JobRecord,
    JobStore,
    remove_output,
)

logger = logging.getLogger(__name__)

MAINTENANCE_SECONDS = 1.0


class JobCancelled(Exception):
    """Raised inside work functions when the job's cancel flag is set."""


@dataclass
class LiveState:
    """What a running job reports, kept in memory (progress, ETA, log lines)."""

    stage: str = "queued"
    done: int = 0
    total: int = 0
    unit: str = ""
    detail: str = ""
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
        if self.detail:
            text += f", {self.detail}"
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

    def progress(
        self, stage: str, done: int, total: int, unit: str = "", *, detail: str = ""
    ) -> None:
        """Report `done` of `total` `unit` in `stage`; `detail` is shown after the counts."""
        if stage != self.live.stage:
            self.live.stage, self.live.stage_started = stage, time.monotonic()
        self.live.done, self.live.total, self.live.unit = done, total, unit
        self.live.detail = detail

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
        max_queued (`int`, *optional*): jobs one owner may have queued or running at once
            (None: no limit).
        keep_hours (`float`, *optional*): remove job outputs this long after the job
            finished (None or 0: keep them).
    """

    def __init__(
        self,
        store: JobStore,
        *,
        concurrency: int = 1,
        user_errors: tuple[type[BaseException], ...] = (),
        max_queued: int | None = None,
        keep_hours: float | None = None,
    ) -> None:
        self.store = store
        self.user_errors = user_errors
        self.max_queued = max_queued
        self.keep_seconds = keep_hours * 3600 if keep_hours else None
        self._pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="job")
        self._live: dict[str, LiveState] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._done: dict[str, threading.Event] = {}
        self._stop = threading.Event()
        self._maintenance = threading.Thread(
            target=self._maintain, name="job-maintenance", daemon=True
        )
        self._maintenance.start()

    def submit(
        self,
        kind: str,
        work: Work,
        *,
        owner: str | None = None,
        recipe: str | None = None,
        params: dict[str, Any] | None = None,
        parent: str | None = None,
    ) -> str:
        """Queue `work` as a job of `owner`.

        Raises:
            `JobLimitError`: `owner` already has `max_queued` jobs queued or running.
        """
        record = self.store.create(
            kind, owner=owner, recipe=recipe, params=params, parent=parent,
            max_active=self.max_queued,
        )  # fmt: skip
        live, cancel, done = LiveState(), threading.Event(), threading.Event()
        self._live[record.id], self._cancel[record.id], self._done[record.id] = live, cancel, done
        context = JobContext(record.id, self.store.job_dir(record.id), live, cancel)
        self._pool.submit(self._run, context, work, done)
        return record.id

    def sweep(self, *, now: float | None = None) -> list[str]:
        """Remove outputs older than `keep_hours` now (the maintenance thread runs it too)."""
        if not self.keep_seconds:
            return []
        return self.store.expire_outputs(older_than=self.keep_seconds, now=now)

    def _maintain(self) -> None:
        last_sweep = 0.0
        every = min(3600.0, (self.keep_seconds or 3600.0) / 10)
        while not self._stop.wait(MAINTENANCE_SECONDS):
            try:
                for job_id in self.store.cancel_requests():
                    event = self._cancel.get(job_id)
                    if event is not None and not event.is_set():
                        logger.info("job %s: cancelled by the operator", job_id)
                        event.set()
                if self.keep_seconds and time.monotonic() - last_sweep >= every:
                    last_sweep = time.monotonic()
                    self.sweep()
            except Exception:  # the store may be closing; keep the app up
                if self._stop.is_set():
                    return
                logger.exception("job maintenance failed")

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
        self._stop.set()
        if cancel:
            for event in self._cancel.values():
                event.set()
        self._pool.shutdown(wait=True, cancel_futures=True)


__all__ = [
    "ACTIVE", "FINISHED", "INTERRUPTED", "JobCancelled", "JobContext", "JobLimitError",
    "JobRecord", "JobRunner", "JobStore", "LiveState", "remove_output",
]  # fmt: skip
