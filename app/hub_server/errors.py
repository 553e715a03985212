"""The HTTP error the routes raise, rendered the way the Hub renders errors."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse


class HubHTTPError(Exception):
    """An error answer: status, message, and the Hub's `X-Error-Code` when it has one.

    Args:
        status (`int`): HTTP status code.
        message (`str`): sent as `{"error": message}` and in `X-Error-Message`.
        code (`str`, *optional*): `RepoNotFound`, `RevisionNotFound`, `EntryNotFound`, `GatedRepo`.
        extra (`dict`, *optional*): more JSON fields (e.g. `url` on a 409 from repo creation).
    """

    def __init__(
        self, status: int, message: str, *, code: str | None = None, extra: dict | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.extra = extra or {}


def header_safe(message: str, limit: int = 500) -> str:
    """`message` as a valid HTTP header value: ASCII, no control characters, bounded."""
    text = message.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if 32 <= ord(c) < 127 else " " for c in text)[:limit]


def render_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI exception handler for `HubHTTPError`."""
    assert isinstance(exc, HubHTTPError)
    headers = {"X-Error-Message": header_safe(exc.message)}
    if exc.code:
        headers["X-Error-Code"] = exc.code
    body = {"error": exc.message, **exc.extra}
    if request.method == "HEAD":
        return JSONResponse(None, status_code=exc.status, headers=headers)
    return JSONResponse(body, status_code=exc.status, headers=headers)


def render_http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (no such route, wrong method) and FastAPI's parameter
    validation errors, rendered like the Hub's: ``{"error": message}``."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    if isinstance(exc, RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}"
                             for e in exc.errors()[:5])  # fmt: skip
        return render_error(request, HubHTTPError(422, f"Invalid request: {problems}"))
    assert isinstance(exc, HTTPException)
    return render_error(request, HubHTTPError(exc.status_code, str(exc.detail)))
