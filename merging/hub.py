"""Talk to the Hugging Face Hub: resolve, download, read headers remotely, search, push.

Every function takes the user's `token` as a keyword argument and passes it straight to
`huggingface_hub`; it is never logged, stored, or put into a message. ``token=None`` means
anonymous: the machine's stored token is never used implicitly (in a multi-user app it would
belong to someone else). `endpoint` defaults to `HF_ENDPOINT` (read by `huggingface_hub` at
import); pass it to talk to another Hub, e.g. the local server of `app.hub_server`.

Errors from the Hub become `merging.errors` classes, raised ``from`` the original:
401 → `AuthError`, gated → `GatedRepoAccessError`, 404 → `NotFoundError`, 409 →
`RepoExistsError`; 429/5xx and connection errors are retried with backoff, then `HubError`.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import huggingface_hub.utils as hf_utils
from huggingface_hub import EvalResult, ModelCard, hf_hub_url
from pydantic import BaseModel, ConfigDict

from merging._hub_calls import auth_token, call, download_one, hub_api, repo_files
from merging._hub_search import ModelSummary, search_models
from merging.errors import AuthError, CheckpointError, HubError, UnsafeCheckpointError
from merging.io.headers import TensorHeader

__all__ = [
    "ModelSummary",
    "PushResult",
    "download_model",
    "push_folder",
    "remote_config",
    "remote_tensor_headers",
    "resolve_revision",
    "search_models",
    "write_eval_results_to_card",
]
logger = logging.getLogger(__name__)
Progress = Callable[[int, int], None]

MERGE_FILES = (
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "adapter_config.json",
    "README.md",  # the card: its licence goes into the merged model's card when sources agree
)
PICKLE_FILES = ("*.bin", "pytorch_model.bin.index.json")
SAFETENSORS_INDEX = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100_000_000


class PushResult(BaseModel):
    """Where a pushed folder landed."""

    model_config = ConfigDict(frozen=True)

    repo_url: str
    commit_url: str
    commit_sha: str


# ---------------------------------------------------------------------- reading
def resolve_revision(
    repo_id: str,
    revision: str | None = None,
    *,
    token: str | None = None,
    endpoint: str | None = None,
) -> str:
    """The 40-hex commit sha that `revision` (default: the main branch) points at now.

    Args:
        repo_id (`str`): e.g. ``"HuggingFaceTB/SmolLM2-135M"``.
        revision (`str`, *optional*): branch, tag or commit; None for the default branch.
        token (`str`, *optional*): the user's token; None is anonymous.
        endpoint (`str`, *optional*): Hub URL; defaults to `HF_ENDPOINT`.

    Returns:
        `str`: the commit sha, to pin every later download to the same snapshot.

    Raises:
        `NotFoundError`, `AuthError`, `GatedRepoAccessError`, `HubError`
    """
    api = hub_api(token, endpoint)
    info = call(
        lambda: api.model_info(repo_id, revision=revision),
        action="resolving",
        repo_id=repo_id,
        revision=revision,
    )
    if not info.sha:
        raise HubError(f"the Hub returned no commit for {repo_id}@{revision or 'main'}")
    return info.sha


def download_model(
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    allow_pickle: bool = False,
    progress: Progress | None = None,
    cache_dir: str | Path | None = None,
    endpoint: str | None = None,
) -> Path:
    """Download what a merge needs from a model repo into the standard Hugging Face cache.

    Only top-level weights (safetensors shards and index; ``*.bin`` only with `allow_pickle`),
    configs and tokenizer files are fetched, pinned to the commit `revision` resolves to now,
    so a branch moving mid-download cannot mix two snapshots.

    Args:
        revision (`str`, *optional*): branch, tag or commit; None for the default branch.
        allow_pickle (`bool`, *optional*, defaults to False): also fetch ``*.bin`` weights.
        progress (`Callable[[int, int], None]`, *optional*): called with (bytes done, bytes
            total) after each file.
        cache_dir (`str` or `Path`, *optional*): defaults to the standard HF cache.

    Returns:
        `Path`: the snapshot folder, ``<cache>/models--org--name/snapshots/<sha>``.

    Raises:
        `UnsafeCheckpointError`: only pickle weights exist and `allow_pickle` is False.
        `CheckpointError`: the repo has no weights at all.
        `NotFoundError`, `AuthError`, `GatedRepoAccessError`, `HubError`

    Example:
        >>> path = download_model("HuggingFaceTB/SmolLM2-135M", token=None)
    """
    api = hub_api(token, endpoint)
    sha = resolve_revision(repo_id, revision, token=token, endpoint=endpoint)
    files = repo_files(api, repo_id, sha)
    top_level = [name for name in files if "/" not in name]
    patterns = [*MERGE_FILES, *(PICKLE_FILES if allow_pickle else ())]
    wanted = sorted(hf_utils.filter_repo_objects(top_level, allow_patterns=patterns))
    weights = [n for n in wanted if n.endswith((".safetensors", ".bin"))]
    if not weights:
        if any(n.endswith(".bin") for n in top_level):
            raise UnsafeCheckpointError(
                f"{repo_id}@{sha[:8]} has only pickle (.bin) weights; opt in with allow_pickle"
            )
        raise CheckpointError(f"{repo_id}@{sha[:8]} has no safetensors weights to merge")
    total, done = sum(files[n] for n in wanted), 0
    kwargs = {"cache_dir": cache_dir, "endpoint": endpoint}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            pool.submit(download_one, repo_id, n, sha=sha, token=token, **kwargs): n for n in wanted
        }
        for future in as_completed(futures):
            local = future.result()
            done += files[futures[future]]
            if progress is not None:
                progress(done, total)
    logger.info("downloaded %d files of %s@%s", len(wanted), repo_id, sha[:8])
    return local.parent  # every wanted file is top-level: its folder is the snapshot


def _read_header(url: str, headers: dict[str, str], *, repo_id: str, filename: str) -> dict:
    """Fetch one safetensors header with two exact Range requests (no tensor data)."""
    session = hf_utils.get_session()

    def fetch(first: int, last: int) -> bytes:
        response = session.get(url, headers={**headers, "Range": f"bytes={first}-{last}"})
        hf_utils.hf_raise_for_status(response)
        return response.content

    action = f"reading the header of {filename} in"
    prefix = call(lambda: fetch(0, 7), action=action, repo_id=repo_id)
    (length,) = struct.unpack("<Q", prefix[:8]) if len(prefix) >= 8 else (0,)
    if not 0 < length <= MAX_HEADER_BYTES:
        raise CheckpointError(f"{repo_id}/{filename} is not a valid safetensors file")
    raw = call(lambda: fetch(8, 7 + length), action=action, repo_id=repo_id)
    try:
        header = json.loads(raw[:length])
    except ValueError as e:
        raise CheckpointError(f"{repo_id}/{filename} has a corrupt safetensors header") from e
    return header


def remote_tensor_headers(
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> dict[str, TensorHeader]:
    """Names, shapes and dtypes of every tensor of a Hub model, without downloading weights.

    Reads each shard's header with HTTP Range requests for exactly its 8-byte length prefix and
    its JSON header (`HfApi.get_safetensors_metadata` prefetches 100 kB per shard, which for
    small shards is weight data). Sharded repos are read through their index.

    Returns:
        `dict[str, TensorHeader]`: tensor name → header, in index order.

    Raises:
        `CheckpointError`: no safetensors weights, or a corrupt header.
        `NotFoundError`, `AuthError`, `GatedRepoAccessError`, `HubError`
    """
    api = hub_api(token, endpoint)
    sha = resolve_revision(repo_id, revision, token=token, endpoint=endpoint)
    files = repo_files(api, repo_id, sha)
    if SAFETENSORS_INDEX in files:
        index_path = download_one(
            repo_id, SAFETENSORS_INDEX, sha=sha, token=token, endpoint=endpoint
        )
        shards = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
    else:
        shards = [n for n in ("model.safetensors", "adapter_model.safetensors") if n in files][:1]
    if not shards:
        raise CheckpointError(f"{repo_id}@{sha[:8]} has no safetensors weights")
    headers = hf_utils.build_hf_headers(token=auth_token(token))
    result: dict[str, TensorHeader] = {}
    for shard in shards:
        url = hf_hub_url(repo_id, shard, revision=sha, endpoint=endpoint)
        raw = _read_header(url, headers, repo_id=repo_id, filename=shard)
        for name, info in raw.items():
            if name != "__metadata__":
                result[name] = TensorHeader(name, tuple(info["shape"]), info["dtype"])
    return result


def remote_config(
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The parsed ``config.json`` of a Hub model (downloaded into the HF cache).

    Raises:
        `NotFoundError`: no config.json; also `AuthError`, `GatedRepoAccessError`, `HubError`.
    """
    sha = resolve_revision(repo_id, revision, token=token, endpoint=endpoint)
    path = download_one(
        repo_id, "config.json", sha=sha, token=token, endpoint=endpoint, cache_dir=cache_dir
    )
    config = json.loads(path.read_text())
    if not isinstance(config, dict):
        raise CheckpointError(f"config.json of {repo_id} is not a JSON object")
    return config


# ---------------------------------------------------------------------- pushing
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
    retry = {"retries": retries, "backoff": backoff, "repo_id": repo_id}
    repo_url = call(
        lambda: api.create_repo(repo_id, private=private, exist_ok=exist_ok),
        action="creating",
        **retry,
    )
    if revision is not None and revision != "main":
        call(
            lambda: api.create_branch(repo_id, branch=revision, exist_ok=True),
            action="creating a branch in",
            **retry,
        )
    commit = call(
        lambda: api.upload_folder(
            folder_path=folder, repo_id=repo_id, revision=revision, commit_message=commit_message
        ),
        action="uploading to",
        revision=revision,
        **retry,
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
    keys = ("task_name", "task_type", "dataset_name", "dataset_type", "metric_name")
    keys += ("metric_type", "metric_value")
    try:
        entries = [EvalResult(**{key: result[key] for key in keys}) for result in results]
    except KeyError as e:
        raise CheckpointError(f"evaluation result lacks the field {e.args[0]!r}") from e
    card.data.model_name = model_name or card.data.model_name or Path(folder).resolve().name
    card.data.eval_results = [*(card.data.eval_results or []), *entries]
    card.save(path)
    return path
