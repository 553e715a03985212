"""``hubmerge serve [--demo] [--host H] [--port P] [--data-dir D]``: start the web app.

With ``--demo`` a local Hub server seeded with tiny demo models starts first (on 127.0.0.1)
and the app talks to it, so the whole flow works offline. Options override the environment
variables of docs/settings.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("serve", help="start the web app (and its API)")
    p.add_argument("--demo", action="store_true", help="offline demo with a local, seeded Hub")
    p.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 7860)")
    p.add_argument("--data-dir", type=Path, help="jobs, outputs and demo data (see docs)")
    p.add_argument("--concurrency", type=int, help="heavy jobs at once (default 1)")
    p.set_defaults(run=run)


def settings_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from app.settings import read_settings

    settings = read_settings()
    changes = {
        "demo": bool(args.demo) or settings.demo,
        "host": args.host,
        "port": args.port,
        "data_dir": args.data_dir,
        "concurrency": args.concurrency,
    }
    return settings.with_(**{k: v for k, v in changes.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    from app.__main__ import run as serve

    serve(settings_from_args(args))
    return 0
