"""Checks on what clients send: JSON bodies, file paths in a repo, LFS object ids.

Every malformed input is a 4xx with a message (`HubHTTPError`), never a 500. File paths are
refused as the Hub refuses them at commit time: ``..`` or ``.`` segments, absolute paths,
empty segments, backslashes, control characters, ``.git`` folders.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Request

from .errors import HubHTTPError

OID = re.compile(r"^[0-9a-f]{64}$")
MAX_PATH = 1000
MAX_JSON_BODY = 1 << 20  # JSON API bodies are small; commits (NDJSON) are read separately


def bad_path(path: Any) -> str | None:
    """Why `path` cannot name a file in a repo, or None if it can."""
    if not isinstance(path, str) or not path:
        return "a file path must be a non-empty string"
    if len(path) > MAX_PATH:
        return f"a file path has at most {MAX_PATH} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in path) or "\\" in path:
        return f"{path!r} contains control characters or backslashes"
    if path.startswith("/"):
        return f"{path!r} is absolute; paths are relative to the repo root"
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            return f"{path!r} has an empty, '.' or '..' segment"
        if segment == ".git":
            return f"{path!r} is inside a .git folder"
    return None


def file_path(path: Any) -> str:
    """`path` if it may name a file in a repo.

    Raises:
        `ValueError`: the reason it may not.
    """
    problem = bad_path(path)
    if problem is not None:
        raise ValueError(f"Invalid path: {problem}")
    return str(path)


def oid(value: Any) -> str:
    """An LFS object id (64 hex digits).

    Raises:
        `ValueError`: anything else (a path-like oid would name a file outside the store).
    """
    if not isinstance(value, str) or not OID.match(value):
        raise ValueError(f"invalid LFS oid {str(value)[:80]!r}")
    return value


def size(value: Any, *, default: int | None = None) -> int:
    """A non-negative integer size (`default` when missing).

    Raises:
        `ValueError`: not a non-negative integer.
    """
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"invalid size {str(value)[:40]!r}")
    return value


async def json_body(request: Request, *, empty_ok: bool = False) -> dict[str, Any]:
    """The request's JSON object.

    Raises:
        `HubHTTPError`: 400 for a body that is not a JSON object, 413 for a huge one.
    """
    raw = await request.body()
    if len(raw) > MAX_JSON_BODY:
        raise HubHTTPError(413, f"Request body too large (at most {MAX_JSON_BODY} bytes)")
    if not raw.strip() and empty_ok:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise HubHTTPError(400, f"Malformed JSON body: {str(err)[:200]}") from None
    if not isinstance(body, dict):
        raise HubHTTPError(400, "Malformed JSON body: expected a JSON object")
    return body


def text(body: dict[str, Any], key: str, default: str = "") -> str:
    """A string field of a JSON body (`default` when missing or null).

    Raises:
        `HubHTTPError`: 400 when the field is present but not a string.
    """
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise HubHTTPError(400, f"'{key}' must be a string")
    return value
