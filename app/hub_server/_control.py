"""Test hooks of the local Hub server: injected failures and a count of bytes served.

`ServerControl` is reachable as ``app.state.control``. It is meant for tests that need a
flaky Hub (fail the next N requests to a path) or need to prove that a client read only
file headers (bytes served per file).
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

Scope = dict[str, Any]


@dataclass
class _Fault:
    pattern: re.Pattern[str]
    method: str | None
    status: int
    remaining: int


@dataclass
class ServerControl:
    """Mutable switches and counters shared by the app and the tests driving it."""

    bytes_served: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)
    _faults: list[_Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(
        self,
        path_regex: str,
        *,
        count: int = 1,
        status: int = 500,
        method: str | None = None,
    ) -> None:
        """Answer the next `count` requests whose path matches `path_regex` with `status`.

        Args:
            path_regex (`str`): searched (not matched) in the request path.
            status (`int`, *optional*, defaults to 500): e.g. 429, 500, 503.
            method (`str`, *optional*): only requests with this HTTP method.
        """
        fault = _Fault(re.compile(path_regex), method, status, count)
        with self._lock:
            self._faults.append(fault)

    def take_fault(self, method: str, path: str) -> _Fault | None:
        """Consume and return the first armed fault matching this request, if any."""
        with self._lock:
            for fault in self._faults:
                if fault.method not in (None, method) or not fault.pattern.search(path):
                    continue
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def count_bytes(self, key: str, n: int) -> None:
        """Record `n` body bytes served for `key` (``"<repo_id>/<path>"``)."""
        with self._lock:
            self.bytes_served[key] += n

    def reset(self) -> None:
        """Forget counters and armed faults."""
        with self._lock:
            self.bytes_served.clear()
            self.requests.clear()
            self._faults.clear()


class FaultMiddleware:
    """ASGI middleware applying `ServerControl` faults before the app sees the request."""

    def __init__(self, app: Any, control: ServerControl) -> None:
        self.app = app
        self.control = control

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        with self.control._lock:
            self.control.requests[f"{method} {path}"] += 1
        fault = self.control.take_fault(method, path)
        if fault is None:
            await self.app(scope, receive, send)
            return
        while (await receive()).get("more_body"):
            pass  # drain the request body so the client is not left writing
        body = json.dumps({"error": f"injected failure ({fault.status})"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        if fault.status == 429:
            headers.append((b"retry-after", b"0"))
        await send({"type": "http.response.start", "status": fault.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
