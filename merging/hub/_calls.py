"""Shared plumbing of `merging.hub`: one Hub call with retries, and error translation.

Messages are built from the repo id and the action only, never from the exception text, so a
token can never leak into them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import huggingface_hub.utils as hf_utils
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from merging.errors import (
    AuthError,
    GatedRepoAccessError,
    HubError,
    MergeError,
    NotFoundError,
    RepoExistsError,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
_transport = getattr(getattr(hf_utils, "httpx", None), "TransportError", OSError)
TRANSIENT_EXCEPTIONS: tuple[type[Exception], ...] = (ConnectionError, TimeoutError, _transport)


def as_hub_error(error: Exception, *, action: str, repo_id: str, revision: str | None) -> HubError:
    """Translate a `huggingface_hub` failure into our hierarchy; the message never has a token."""
    where = repo_id if revision is None else f"{repo_id}@{revision}"
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, GatedRepoError):
        return GatedRepoAccessError(
            f"{where} is gated: accept the licence on the Hub page of {repo_id}, "
            "then use a token of the account that accepted it"
        )
    if status == 401:
        return AuthError(
            f"{action} {where}: token missing or invalid (a private repo also needs a token "
            "that can see it)"
        )
    if isinstance(error, RevisionNotFoundError):
        return NotFoundError(f"revision {revision!r} not found in {repo_id}")
    if isinstance(error, EntryNotFoundError):
        return NotFoundError(f"{action} {where}: file not found in the repo")
    if isinstance(error, RepositoryNotFoundError) or status == 404:
        return NotFoundError(f"repo {repo_id} not found (or private and not visible to this token)")
    if status == 403:
        return AuthError(f"{action} {where}: this token has no permission for it")
    if status == 409:
        return RepoExistsError(f"repo {repo_id} already exists (pass exist_ok to push into it)")
    if status in TRANSIENT_STATUS:
        return HubError(f"{action} {where}: the Hub is unavailable (HTTP {status}); try later")
    if status is not None:
        return HubError(f"{action} {where}: the Hub answered HTTP {status}")
    return HubError(f"{action} {where}: cannot reach the Hub ({type(error).__name__})")


def is_transient(error: Exception) -> bool:
    if isinstance(error, HfHubHTTPError):
        return getattr(error.response, "status_code", None) in TRANSIENT_STATUS
    return isinstance(error, TRANSIENT_EXCEPTIONS)


def call(
    fn: Callable[[], T],
    *,
    action: str,
    repo_id: str,
    revision: str | None = None,
    retries: int = 2,
    backoff: float = 0.5,
) -> T:
    """Run one Hub call, retrying transient failures with exponential backoff."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except (HfHubHTTPError, LocalEntryNotFoundError, *TRANSIENT_EXCEPTIONS) as e:  # type: ignore[misc]
            if isinstance(e, MergeError):
                raise
            # hf_hub_download hides HTTP/connection failures behind LocalEntryNotFoundError
            cause = e.__cause__ if isinstance(e, LocalEntryNotFoundError) else None
            real = cause if isinstance(cause, Exception) else e
            if not is_transient(real) or attempt == retries:
                raise as_hub_error(real, action=action, repo_id=repo_id, revision=revision) from e
            delay = backoff * 2**attempt
            logger.warning(
                "%s %s failed transiently; retry %d in %.1fs", action, repo_id, attempt + 1, delay
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def hub_api(token: str | None, endpoint: str | None) -> HfApi:
    return HfApi(endpoint=endpoint, token=token if token else False)


def auth_token(token: str | None) -> str | bool:
    return token if token else False


def download_one(
    repo_id: str, filename: str, *, sha: str, token: str | None, **kwargs: Any
) -> Path:
    path = call(
        lambda: hf_hub_download(repo_id, filename, revision=sha, token=auth_token(token), **kwargs),
        action=f"downloading {filename} from",
        repo_id=repo_id,
        revision=sha,
    )
    return Path(path)
