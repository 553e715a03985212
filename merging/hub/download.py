"""Pin a Hub model to a commit and download what a merge needs (weights, configs, tokenizer)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import huggingface_hub.utils as hf_utils

from merging.errors import CheckpointError, HubError, UnsafeCheckpointError
from merging.hub._calls import call, download_one, hub_api
from merging.hub.pinned import pin, require_file_access

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
    pinned = pin(repo_id, revision, token=token, endpoint=endpoint)
    sha, files = pinned.sha, pinned.files
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
    require_file_access(pinned, weights[0], token=token)  # gated: cached files only if allowed
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


__all__ = ["MERGE_FILES", "PICKLE_FILES", "download_model", "resolve_revision"]
