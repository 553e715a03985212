"""``hubmerge jobs list|show|cancel|prune``: the operator's view of every job, on the data dir.

Over the web each user sees only their own jobs; whoever runs the app sees all of them here,
with their owners. The commands read the app's SQLite database directly, so they work while
the app runs (a cancellation is picked up by the running app within a few seconds).

    hubmerge jobs list --owner user:alice --state running
    hubmerge jobs show merge-3f2a…
    hubmerge jobs cancel merge-3f2a…
    hubmerge jobs prune --hours 12
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

COLUMNS = ("id", "kind", "state", "owner", "created", "seconds", "output")


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    jobs = subparsers.add_parser("jobs", help="list, inspect, cancel and prune the app's jobs")
    jobs.add_argument("--data-dir", type=Path, help="the app's data dir (HUBMERGE_DATA_DIR)")
    actions = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every user's jobs, newest first")
    listing.add_argument("--owner", help="only this owner (e.g. user:alice)")
    listing.add_argument("--state", help="only this state (queued, running, succeeded, …)")
    listing.add_argument("--kind", help="only this kind (merge, evaluate, push)")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.add_argument("--json", action="store_true", help="one JSON record per line")
    listing.set_defaults(run=run_list)
    show = actions.add_parser("show", help="one job's full record, as JSON")
    show.add_argument("job_id")
    show.set_defaults(run=run_show)
    cancel = actions.add_parser("cancel", help="stop a queued or running job")
    cancel.add_argument("job_id")
    cancel.set_defaults(run=run_cancel)
    prune = actions.add_parser("prune", help="remove the outputs of old finished jobs")
    prune.add_argument("--hours", type=float, help="older than this (default HUBMERGE_KEEP_HOURS)")
    prune.add_argument("--delete", action="store_true", help="forget their records too")
    prune.set_defaults(run=run_prune)


def _store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from app.jobs_store import JobStore
    from app.settings import read_settings
    from merging.errors import OutputError

    settings = read_settings()
    data_dir = args.data_dir or settings.data_dir
    if not (data_dir / "jobs.sqlite").is_file():
        raise OutputError(f"no job database in {data_dir} (set HUBMERGE_DATA_DIR or --data-dir)")
    settings = settings.with_(data_dir=data_dir)
    return JobStore(settings.jobs_db, jobs_dir=settings.jobs_dir, recover=False), settings


def _get(store, job_id: str):  # type: ignore[no-untyped-def]
    from merging.errors import OutputError

    record = store.get(job_id.strip())
    if record is None:
        raise OutputError(f"no job {job_id!r}")
    return record


def _cell(record, column: str) -> str:  # type: ignore[no-untyped-def]
    if column == "created":
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
    if column == "seconds":
        return "" if record.seconds is None else f"{record.seconds:.1f}"
    if column == "output" and record.expired is not None:
        return "(expired)"
    value = getattr(record, column)
    return "" if value is None else str(value)


def run_list(args: argparse.Namespace) -> int:
    store, _ = _store(args)
    records = store.list(limit=args.limit, kind=args.kind, owner=args.owner, state=args.state)
    if args.json:
        for record in records:
            print(json.dumps(record.to_dict(), default=str))
        return 0
    rows = [[_cell(r, c) for c in COLUMNS] for r in records]
    widths = [max([len(c), *(len(row[i]) for row in rows)]) for i, c in enumerate(COLUMNS)]
    print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0


def run_show(args: argparse.Namespace) -> int:
    store, _ = _store(args)
    print(json.dumps(_get(store, args.job_id).to_dict(), indent=2, default=str))
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    from app.jobs_store import ACTIVE

    store, _ = _store(args)
    record = _get(store, args.job_id)
    if record.state not in ACTIVE:
        print(f"{record.id} is {record.state}; nothing to cancel")
        return 1
    store.update(record.id, cancel_requested=True)
    print(f"cancel requested for {record.id} ({record.state}); the app stops it within seconds")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    from app.jobs_store import FINISHED

    store, settings = _store(args)
    hours = settings.keep_hours if args.hours is None else args.hours
    removed = store.expire_outputs(older_than=hours * 3600)
    print(f"removed the outputs of {len(removed)} job(s) finished more than {hours:g} h ago")
    if args.delete:
        cutoff = time.time() - hours * 3600
        old = [r for r in store.list(limit=1_000_000)
               if r.state in FINISHED and (r.finished or r.created) < cutoff]  # fmt: skip
        for record in old:
            store.delete(record.id)
        print(f"deleted {len(old)} record(s)")
    return 0
