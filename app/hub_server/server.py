"""Build the FastAPI app and run it with uvicorn (blocking, or in a background thread)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping

import uvicorn
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import oauth, routes_api, routes_files
from ._auth import Authenticator
from ._control import FaultMiddleware, ServerControl
from ._state import HubState
from .errors import HubHTTPError, render_error, render_http_error
from .storage import RepoStore

logger = logging.getLogger(__name__)


def create_app(
    data_dir: str | os.PathLike[str],
    *,
    tokens: Mapping[str, str] | None = None,
    oauth_clients: Mapping[str, str] | None = None,
) -> FastAPI:
    """Create the Hub-compatible app serving the repositories stored in `data_dir`.

    Args:
        data_dir (`str` or `os.PathLike`):
            Where repositories, commits and blobs live; created if missing, reused on restart.
        tokens (`Mapping[str, str]`, *optional*):
            token → user name. Without it the server is open (no authentication at all).
        oauth_clients (`Mapping[str, str]`, *optional*):
            client id → client secret of the OAuth apps that may use "Sign in with the Hub"
            (`oauth`); without it the OAuth routes answer 404.

    Returns:
        `FastAPI`: the app; ``app.state.control`` is a `ServerControl` for tests.

    Example:
        >>> app = create_app("/tmp/hub-data", tokens={"hf_secret": "alice"})
        >>> app.state.control.fail_next("/commit/", status=503)
    """
    app = FastAPI(title="hubmerge local Hub", docs_url=None, redoc_url=None, openapi_url=None)
    control = ServerControl()
    app.state.hub = HubState(RepoStore(data_dir), Authenticator(tokens), control)
    app.state.control = control
    app.state.oauth = oauth.OAuthProvider(dict(oauth_clients)) if oauth_clients else None
    app.add_exception_handler(HubHTTPError, render_error)
    app.add_exception_handler(StarletteHTTPException, render_http_error)
    app.add_exception_handler(RequestValidationError, render_http_error)
    app.include_router(routes_api.router)
    app.include_router(routes_files.router)
    app.include_router(oauth.router)
    app.add_middleware(FaultMiddleware, control=control)
    return app


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def running_app(app: FastAPI, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` from a background thread for the duration of a `with` block.

    Args:
        host (`str`, *optional*, defaults to `"127.0.0.1"`): interface to bind.
        port (`int`, *optional*, defaults to 0): 0 picks a free port.

    Yields:
        `str`: the base URL, e.g. ``"http://127.0.0.1:53123"``.
    """
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the local Hub server did not start")
        time.sleep(0.01)
    url_host = f"[{host}]" if ":" in host else host
    try:
        yield f"http://{url_host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextlib.contextmanager
def running_server(
    data_dir: str | os.PathLike[str],
    *,
    tokens: Mapping[str, str] | None = None,
    oauth_clients: Mapping[str, str] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> Iterator[str]:
    """Start a server on `data_dir` in a background thread; stop it when the block exits.

    Example:
        >>> with running_server("/tmp/hub-data", tokens={"hf_x": "alice"}) as url:
        ...     HfApi(endpoint=url, token="hf_x").whoami()["name"]
        'alice'
    """
    app = create_app(data_dir, tokens=tokens, oauth_clients=oauth_clients)
    with running_app(app, host=host, port=port) as url:
        yield url


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    data_dir: str | os.PathLike[str] = "hub-data",
    tokens: Mapping[str, str] | None = None,
) -> None:
    """Run the server in the foreground until interrupted (for ``hubmerge hub serve``).

    Args:
        host (`str`, *optional*): interface to bind; keep the default unless you mean to share it.
        port (`int`, *optional*): TCP port.
        data_dir (`str` or `os.PathLike`, *optional*): repository store, created if missing.
        tokens (`Mapping[str, str]`, *optional*): token → user name; None serves without auth.
    """
    app = create_app(data_dir, tokens=tokens)
    auth = "open (no tokens)" if tokens is None else f"{len(tokens)} token(s)"
    logger.info("local Hub on http://%s:%d, data in %s, auth: %s", host, port, data_dir, auth)
    uvicorn.run(app, host=host, port=port, log_level="info")
