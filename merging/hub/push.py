"""Push a merged folder to the Hub in one commit, and add evaluation results to its card."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard
from pydantic import BaseModel, ConfigDict

from merging.errors import AuthError, CheckpointError
from merging.hub._calls import call, hub_api

logger = logging.getLogger(__name__)


class PushResult(BaseModel):
    """Where a pushed folder landed."""

    model_config = ConfigDict(frozen=True)

    repo_url: str
    commit_url: str
    commit_sha: str


def push_folder(
    folder: str | Path,
    *,
    repo_id: str,
    token: str,
    private: bool = False,
    revision: str | None = None,
    exist_ok: bool = False,
    commit_message: str = "Upload merged model with hubmerge",
    retries: int = 3,
    backoff: float = 2.0,
    endpoint: str | None = None,
) -> PushResult:
    """Create `repo_id` and upload `folder` to it in one commit; a README.md becomes the card.

    An interrupted upload is retried (transient errors: 429, 5xx, connection failures). Files
    already uploaded are not sent again, and the repo shows either the previous revision or
    the complete new one, never a half commit.

    Args:
        folder (`str` or `Path`): the merged model (weights, config, tokenizer, README.md).
        repo_id (`str`): ``"user/name"``.
        token (`str`): a write token of the user.
        private (`bool`, *optional*): create the repo private.
        revision (`str`, *optional*): branch to commit to (created if missing).
        exist_ok (`bool`, *optional*, defaults to False): push into an existing repo.
        retries (`int`, *optional*, defaults to 3): retries per step on transient errors.
        backoff (`float`, *optional*, defaults to 2.0): first retry delay in seconds, doubling.

    Returns:
        `PushResult`: repo URL, commit URL and sha.

    Raises:
        `RepoExistsError`: the repo exists and `exist_ok` is False.
        `AuthError`, `NotFoundError`, `HubError`

    Example:
        >>> push_folder("out/merged", repo_id="me/merged-7b", token=user_token)
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"nothing to push: {folder} is not a directory")
    if not token:
        raise AuthError(f"pushing to {repo_id} needs a write token")
    api = hub_api(token, endpoint)
    repo_url = call(
        lambda: api.create_repo(repo_id, private=private, exist_ok=exist_ok),
        action="creating",
        repo_id=repo_id,
        retries=retries,
        backoff=backoff,
    )
    if revision is not None and revision != "main":
        branch = revision
        call(
            lambda: api.create_branch(repo_id, branch=branch, exist_ok=True),
            action="creating a branch in",
            repo_id=repo_id,
            retries=retries,
            backoff=backoff,
        )
    commit = call(
        lambda: api.upload_folder(
            folder_path=folder, repo_id=repo_id, revision=revision, commit_message=commit_message
        ),
        action="uploading to",
        repo_id=repo_id,
        revision=revision,
        retries=retries,
        backoff=backoff,
    )
    logger.info("pushed %s to %s (commit %s)", folder, repo_id, commit.oid[:8])
    return PushResult(repo_url=str(repo_url), commit_url=commit.commit_url, commit_sha=commit.oid)


def write_eval_results_to_card(
    folder: str | Path, results: list[dict[str, Any]], *, model_name: str | None = None
) -> Path:
    """Add `model-index` evaluation results to the README.md model card in `folder`.

    Args:
        results (`list[dict]`): each with ``task_name``, ``task_type``, ``dataset_name``,
            ``dataset_type``, ``metric_name``, ``metric_type``, ``metric_value``.
        model_name (`str`, *optional*): name in the model index; defaults to the card's
            ``model_name`` or the folder name.

    Returns:
        `Path`: the updated README.md.

    Raises:
        `CheckpointError`: no README.md in `folder`, or a result lacks a field.
    """
    path = Path(folder) / "README.md"
    if not path.is_file():
        raise CheckpointError(f"no model card to update: {path} does not exist")
    card = ModelCard.load(path)
    keys = ("task_name", "task_type", "dataset_name", "dataset_type", "metric_name", "metric_type",
            "metric_value")  # fmt: skip
    try:
        entries = [EvalResult(**{key: result[key] for key in keys}) for result in results]
    except KeyError as e:
        raise CheckpointError(f"evaluation result lacks the field {e.args[0]!r}") from e
    card.data.model_name = model_name or card.data.model_name or Path(folder).resolve().name
    card.data.eval_results = [*(card.data.eval_results or []), *entries]
    card.save(path)
    return path


__all__ = ["PushResult", "push_folder", "write_eval_results_to_card"]
