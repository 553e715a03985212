"""What every route needs: the store, the authenticator, the test hooks, a signing secret."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from fastapi import Request

from ._auth import Authenticator
from ._control import ServerControl
from .errors import HubHTTPError
from .storage import NAME, RepoMeta, RepoNotFound, RepoStore

KINDS = {"models": "model", "datasets": "dataset", "spaces": "space"}


@dataclass
class HubState:
    """Shared server state, stored as ``app.state.hub``."""

    store: RepoStore
    auth: Authenticator
    control: ServerControl
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def sign(self, oid: str, size: int) -> str:
        """A capability for uploading exactly this object (LFS PUTs carry no auth header)."""
        return hmac.new(self.secret, f"{oid}:{size}".encode(), hashlib.sha256).hexdigest()

    def meta(self, repo_type: str, repo_id: str) -> RepoMeta:
        """Repo settings, or a 404 `RepoNotFound` (also for ids that cannot exist)."""
        namespace, _, name = repo_id.partition("/")
        if repo_type not in KINDS.values():
            raise HubHTTPError(400, f"Unknown repo type {repo_type[:40]!r}")
        if not (NAME.match(namespace) and NAME.match(name)):
            raise HubHTTPError(404, "Repository not found", code="RepoNotFound")
        try:
            return self.store.get_meta(repo_type, repo_id)
        except RepoNotFound:
            raise HubHTTPError(404, "Repository not found", code="RepoNotFound") from None


def hub(request: Request) -> HubState:
    """The `HubState` of the app serving `request`."""
    return request.app.state.hub


def repo_type_of(kind: str) -> str:
    """`"models"` → `"model"`; 404 for anything that is not a repo kind."""
    if kind not in KINDS:
        raise HubHTTPError(404, f"Unknown repo kind {kind!r}")
    return KINDS[kind]


def base_url(request: Request) -> str:
    """Scheme, host and port the client used to reach us, without a trailing slash."""
    return str(request.base_url).rstrip("/")


def repo_url(request: Request, repo_type: str, repo_id: str) -> str:
    """Web URL of a repo, as the Hub returns it from `create_repo`."""
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    return f"{base_url(request)}/{prefix}{repo_id}"
