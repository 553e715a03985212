"""``hubmerge hub serve`` (the local Hub server) and ``hubmerge push`` (upload a merge).

    hubmerge hub serve --port 8765 --data hub-data --token-file tokens.txt
    HF_TOKEN=hf_… hubmerge push out/merged --repo-id me/my-merge --private

A token file for ``hub serve`` holds one ``TOKEN USER`` pair per line (``#`` comments); without
one the server is open. ``push`` reads its token from ``--token-file`` or ``HF_TOKEN`` and the
Hub from ``HF_ENDPOINT``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from app.commands._common import add_token_options, read_token


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    hub = subparsers.add_parser("hub", help="run the local Hub-compatible server")
    actions = hub.add_subparsers(dest="hub_command", required=True, metavar="ACTION")
    serve = actions.add_parser("serve", help="serve repositories from a folder over HTTP")
    serve.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    serve.add_argument("--data", type=Path, default=Path("hub-data"), help="repository store")
    serve.add_argument("--token-file", type=Path, help="lines of 'TOKEN USER'; default: open")
    serve.set_defaults(run=run_serve)

    push = subparsers.add_parser("push", help="upload a merged model folder to the Hub")
    push.add_argument("folder", type=Path, help="the merge output folder")
    push.add_argument("--repo-id", required=True, help="namespace/name")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--revision", help="branch to commit to (default: main)")
    push.add_argument("--exist-ok", action="store_true", help="update an existing repo")
    add_token_options(push)
    push.set_defaults(run=run_push)


def read_token_file(path: Path) -> dict[str, str]:
    """``TOKEN USER`` lines → {token: user}."""
    from merging.errors import RecipeError

    tokens: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise RecipeError(f"{path}:{number}: expected 'TOKEN USER'")
        tokens[parts[0]] = parts[1]
    return tokens


def run_serve(args: argparse.Namespace) -> int:
    from app.hub_server import serve

    tokens = read_token_file(args.token_file) if args.token_file else None
    serve(host=args.host, port=args.port, data_dir=args.data, tokens=tokens)
    return 0


def run_push(args: argparse.Namespace) -> int:
    from merging.errors import AuthError, OutputError
    from merging.hub import push_folder

    if not args.folder.is_dir():
        raise OutputError(f"{args.folder} is not a folder")
    token = read_token(args)
    if not token:
        raise AuthError("pushing needs a token: set HF_TOKEN or pass --token-file")
    result = push_folder(
        args.folder,
        repo_id=args.repo_id,
        token=token,
        private=args.private,
        revision=args.revision,
        exist_ok=args.exist_ok,
    )
    print(result.commit_url)
    return 0
