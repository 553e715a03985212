"""Who is calling: the identity a job belongs to, and the one ownership check every job
endpoint uses.

An identity is resolved per request, in this order:

1. ``user:<name>``: the Hub user behind the caller's token (``whoami`` against the app's
   configured endpoint). On Spaces the token is the signed-in user's OAuth token, so the
   same person is the same identity whether they sign in or paste a token. Answers are
   cached under a SHA-256 of the token, never the token itself.
2. ``session:<digest>``: with no token (or one the Hub refuses), the caller's Gradio session
   (a browser tab, one `gradio_client.Client` instance, one MCP session; a stateless MCP
   call is its own); only a digest of the session hash is kept, so the database cannot be
   used to act as a session.
3. ``local``: an in-process call without any request (tests, scripts calling `Handlers`).

>>> identities = Identities(endpoint="http://127.0.0.1:8765")  # doctest: +SKIP
>>> identities.resolve("hf_...", session="abc123")  # doctest: +SKIP
'user:alice'
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

LOCAL = "local"
USER_TTL = 600.0  # seconds a whoami answer is trusted
REFUSED_TTL = 30.0  # seconds a refused token is remembered as refused


def digest(secret: str) -> str:
    """A SHA-256 hex digest: what is kept instead of a token or a session hash."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def session_identity(session_hash: str) -> str:
    return f"session:{digest(session_hash)[:32]}"


def _whoami(endpoint: str | None) -> Callable[[str], str | None]:
    def ask(token: str) -> str | None:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError

        try:
            info = HfApi(endpoint=endpoint).whoami(token=token)
        except HfHubHTTPError as err:
            status = getattr(err.response, "status_code", None)
            if status in (401, 403):
                return None  # the Hub refuses the token: the caller is anonymous
            raise
        name = info.get("name") if isinstance(info, dict) else None
        return str(name) if name else None

    return ask


class Identities:
    """Resolves callers to identities; thread-safe, with a cache keyed by token digests.

    Args:
        endpoint (`str`, *optional*): the Hub the app talks to (`None`: the real Hub).
        whoami (`Callable[[str], str | None]`, *optional*): token → user name, or None for a
            token the Hub refuses; raises when the Hub cannot be asked. Default: ``whoami``
            against `endpoint`.
    """

    def __init__(
        self, endpoint: str | None = None, *, whoami: Callable[[str], str | None] | None = None
    ) -> None:
        self._whoami = whoami or _whoami(endpoint)
        self._cache: dict[str, tuple[str | None, float]] = {}
        self._lock = threading.Lock()

    def user(self, token: str) -> str | None:
        """The Hub user name behind `token` (None: refused, or the Hub cannot be reached)."""
        key = digest(token)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            name = self._whoami(token)
        except Exception as err:  # the Hub is down: not cached, the session stands in
            logger.warning("whoami failed (%s); treating the caller as anonymous",
                           type(err).__name__)  # fmt: skip
            return None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
            self._cache[key] = (name, now + (USER_TTL if name else REFUSED_TTL))
        return name

    def resolve(self, token: str | None, *, session: str | None) -> str:
        """The identity of a caller with this token (may be None) and Gradio session hash."""
        if token:
            name = self.user(token)
            if name:
                return f"user:{name}"
        if session:
            return session_identity(session)
        return LOCAL

    def of_request(self, token: str | None, request: Any) -> str:
        """`resolve` for a handler's ``gr.Request`` (None outside a web request).

        Gradio's MCP server relays every tool call through one shared client (one session
        hash for all MCP callers) and forwards each caller's headers. A caller's MCP session
        id (``Mcp-Session-Id``) stands in for the session; a call from a stateless MCP
        server (gradio's is: no session id, only ``MCP-Protocol-Version``) has no session to
        share, so without a token it is an identity of its own that no later call matches.
        """
        session = getattr(request, "session_hash", None) if request is not None else None
        try:
            headers = request.headers if request is not None else {}
            mcp_session, mcp = headers.get("mcp-session-id"), headers.get("mcp-protocol-version")
        except Exception:  # a request without headers (built in-process)
            mcp_session = mcp = None
        if mcp_session:
            session = f"mcp:{mcp_session}"
        elif mcp:
            session = f"mcp-call:{secrets.token_hex(16)}"
        return self.resolve(token, session=session)
