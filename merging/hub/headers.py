"""Read a Hub model's tensor headers and config remotely: HTTP range requests, no weight data."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import huggingface_hub.utils as hf_utils
from huggingface_hub import hf_hub_url

from merging.errors import CheckpointError
from merging.hub._calls import auth_token, call, download_one, hub_api, repo_files
from merging.hub.download import resolve_revision
from merging.io.headers import TensorHeader

SAFETENSORS_INDEX = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100_000_000


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


__all__ = ["remote_config", "remote_tensor_headers"]
