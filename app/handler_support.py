"""What every handler module shares: user-facing errors, the public view of a job record, and
the caller's token (OAuth sign-in first, else the token field)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import gradio as gr

from app import workflows
from app.jobs import JobLimitError, JobRecord
from merging.errors import MergeError

logger = logging.getLogger("app.handlers")


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message is meant for the user (bad recipe, missing token, …)."""
    from evaluation.errors import EvaluationError

    return (MergeError, EvaluationError, workflows.InputError, JobLimitError)


def as_gr_error(err: BaseException) -> gr.Error:
    if isinstance(err, user_errors()):
        return gr.Error(str(err), print_exception=False)
    logger.exception("unexpected failure", exc_info=err)
    return gr.Error("Something went wrong on the server; the log has the details.")


@contextlib.contextmanager
def user_facing() -> Iterator[None]:
    """Turn any failure inside the block into a `gr.Error` (`as_gr_error`)."""
    try:
        yield
    except Exception as err:
        raise as_gr_error(err) from None


def public(record: JobRecord) -> dict[str, Any]:
    """A job record for clients: ``path`` keys are renamed (gradio_client would take a dict
    with a ``path`` for a file to download); the owner and internal flags are left out."""

    def rename(value: Any) -> Any:
        if isinstance(value, dict):
            return {("model_path" if k == "path" else k): rename(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rename(v) for v in value]
        return value

    data = record.to_dict()
    for key in ("owner", "cancel_requested"):
        data.pop(key, None)
    return rename(data)


def _token(token: str | None, oauth_token: gr.OAuthToken | None) -> str | None:
    if oauth_token is not None and getattr(oauth_token, "token", None):
        return oauth_token.token
    return (token or "").strip() or None


__all__ = ["_token", "as_gr_error", "public", "user_errors", "user_facing"]
