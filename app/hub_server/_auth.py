"""Bearer-token authentication and the Hub's access rules for the local server.

Tokens map to user names. Without a token list the server is open: every request acts as
the user ``"local"``. OAuth access tokens (see `oauth`) are granted at run time and expire.
Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass

from fastapi import Request

from .errors import HubHTTPError
from .storage import RepoMeta

OPEN_USER = "local"


@dataclass(frozen=True)
class Caller:
    """Who made a request: a user name, or None when anonymous."""

    user: str | None
    bad_token: bool = False


class Authenticator:
    """Turns the `Authorization` header into a `Caller` and enforces read/write rules.

    Args:
        tokens (`Mapping[str, str]`, *optional*):
            token → user name. None means an open server (no authentication at all).
    """

    def __init__(self, tokens: Mapping[str, str] | None) -> None:
        self._tokens = dict(tokens) if tokens is not None else None
        self._grants: dict[str, tuple[str, float]] = {}  # OAuth token → (user, expiry)

    def grant(self, token: str, user: str, *, expires_at: float) -> None:
        """Accept ``token`` as ``user``'s until ``expires_at`` (an OAuth access token)."""
        now = time.time()
        self._grants = {t: g for t, g in self._grants.items() if g[1] > now}
        self._grants[token] = (user, expires_at)

    def user_for(self, token: str) -> str | None:
        """The user a token belongs to (None if unknown or expired); open servers: ``local``."""
        if self._tokens is None:
            return OPEN_USER
        for known, user in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return user
        for known, (user, expires_at) in list(self._grants.items()):
            if hmac.compare_digest(known.encode(), token.encode()) and expires_at > time.time():
                return user
        return None

    @property
    def is_open(self) -> bool:
        """Whether the server accepts every request without a token."""
        return self._tokens is None

    def caller(self, request: Request) -> Caller:
        """Identify the caller of `request` (never raises)."""
        if self._tokens is None:
            return Caller(OPEN_USER)
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Caller(None)
        user = self.user_for(token.strip())
        return Caller(user) if user is not None else Caller(None, bad_token=True)

    def require_user(self, request: Request) -> str:
        """The authenticated user name.

        Raises:
            `HubHTTPError`: 401 when the token is missing or wrong.
        """
        caller = self.caller(request)
        if caller.user is None:
            raise _unauthorized(caller)
        return caller.user

    def check_read(self, request: Request, meta: RepoMeta) -> Caller:
        """Allow reading `meta`'s repo, or raise like the Hub (401 anonymous, 404 other user)."""
        caller = self.caller(request)
        if caller.bad_token:
            raise _unauthorized(caller)
        if meta.private and not self.is_owner(caller, meta):
            if caller.user is None:
                raise HubHTTPError(401, "Repository not found", code="RepoNotFound")
            raise HubHTTPError(404, "Repository not found", code="RepoNotFound")
        return caller

    def check_download(self, request: Request, meta: RepoMeta, path: str) -> None:
        """Like `check_read`, plus gating: files of a gated repo (except the card) need access."""
        caller = self.check_read(request, meta)
        free = path in ("README.md", ".gitattributes")
        if meta.gated and not free and not self.is_owner(caller, meta):
            status = 401 if caller.user is None else 403
            message = "Access to this model is restricted: accept the conditions on its page"
            raise HubHTTPError(status, message, code="GatedRepo")

    def check_write(self, request: Request, meta: RepoMeta) -> str:
        """Allow writing to `meta`'s repo (owner only), returning the user name."""
        user = self.require_user(request)
        self.check_read(request, meta)
        if not self.is_owner(Caller(user), meta):
            raise HubHTTPError(403, "You don't have the rights to write to this repository")
        return user

    def is_owner(self, caller: Caller, meta: RepoMeta) -> bool:
        """Whether `caller` owns the repo (its namespace is the user's name)."""
        if self.is_open:
            return True
        return caller.user is not None and caller.user == meta.repo_id.split("/")[0]


def _unauthorized(caller: Caller) -> HubHTTPError:
    if caller.bad_token:
        return HubHTTPError(401, "Invalid credentials in Authorization header")
    return HubHTTPError(401, "Invalid username or password.")
