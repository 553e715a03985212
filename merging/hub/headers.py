"""Read a Hub model's tensor headers and config remotely: HTTP range requests, no weight data.

Every call pins the repo with the caller's token (`merging.hub.pinned.pin`, one request);
the headers, the shard index and ``config.json`` of a commit already read come from the
per-process cache of `merging.hub.pinned`, so checking the same commit again costs one
request per model.
"""

from __future__ import annotations

import functools
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub.utils as hf_utils
from huggingface_hub import hf_hub_url

from merging.errors import CheckpointError
from merging.hub._calls import auth_token, call, download_one
from merging.hub.pinned import PinnedRepo, pin, read_pinned
from merging.io.headers import TensorHeader

SAFETENSORS_INDEX = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class RemoteModel:
    """What `remote_model` reads of a Hub model: its commit, tensor headers and config."""

    sha: str
    headers: dict[str, TensorHeader]
    config: dict[str, Any]


def _get(url: str, token: str | None, *, first: int | None = None, last: int = 0) -> bytes:
    headers = hf_utils.build_hf_headers(token=auth_token(token))
    if first is not None:
        headers["Range"] = f"bytes={first}-{last}"
    response = hf_utils.get_session().get(url, headers=headers)
    hf_utils.hf_raise_for_status(response)
    return response.content


def _read_header(pinned: PinnedRepo, filename: str, *, token: str | None) -> bytes:
    """Fetch one safetensors header (its JSON bytes) with two exact Range requests."""
    repo_id = pinned.repo_id
    url = hf_hub_url(repo_id, filename, revision=pinned.sha, endpoint=pinned.endpoint)
    action = f"reading the header of {filename} in"
    prefix = call(lambda: _get(url, token, first=0, last=7), action=action, repo_id=repo_id)
    (length,) = struct.unpack("<Q", prefix[:8]) if len(prefix) >= 8 else (0,)
    if not 0 < length <= MAX_HEADER_BYTES:
        raise CheckpointError(f"{repo_id}/{filename} is not a valid safetensors file")
    raw = call(lambda: _get(url, token, first=8, last=7 + length), action=action, repo_id=repo_id)
    return raw[:length]


def _pinned_file(
    pinned: PinnedRepo, filename: str, *, token: str | None, cache_dir: str | Path | None = None
) -> bytes:
    """A small file of the pinned commit (index, config), through the pinned cache."""

    def fetch() -> bytes:
        if pinned.gated:  # the HF disk cache answers a pinned sha without asking the Hub
            url = hf_hub_url(
                pinned.repo_id, filename, revision=pinned.sha, endpoint=pinned.endpoint
            )
            action = f"downloading {filename} from"
            return call(lambda: _get(url, token), action=action, repo_id=pinned.repo_id)
        path = download_one(
            pinned.repo_id, filename, sha=pinned.sha, token=token, endpoint=pinned.endpoint,
            cache_dir=cache_dir,
        )  # fmt: skip
        return path.read_bytes()

    return read_pinned(pinned, filename, "file", fetch=fetch)


def pinned_tensor_headers(pinned: PinnedRepo, *, token: str | None) -> dict[str, TensorHeader]:
    """`remote_tensor_headers` of a repo `pin` returned for the same `token`."""
    repo_id, sha = pinned.repo_id, pinned.sha
    if SAFETENSORS_INDEX in pinned.files:
        index = json.loads(_pinned_file(pinned, SAFETENSORS_INDEX, token=token))
        shards = sorted(set(index["weight_map"].values()))
    else:
        names = ("model.safetensors", "adapter_model.safetensors")
        shards = [n for n in names if n in pinned.files][:1]
    if not shards:
        raise CheckpointError(f"{repo_id}@{sha[:8]} has no safetensors weights")
    result: dict[str, TensorHeader] = {}
    for shard in shards:
        fetch = functools.partial(_read_header, pinned, shard, token=token)
        raw = read_pinned(pinned, shard, "header", fetch=fetch)
        try:
            header = json.loads(raw)
        except ValueError as e:
            raise CheckpointError(f"{repo_id}/{shard} has a corrupt safetensors header") from e
        for name, info in header.items():
            if name != "__metadata__":
                result[name] = TensorHeader(name, tuple(info["shape"]), info["dtype"])
    return result


def pinned_config(
    pinned: PinnedRepo, *, token: str | None, cache_dir: str | Path | None = None
) -> dict[str, Any]:
    """`remote_config` of a repo `pin` returned for the same `token`."""
    config = json.loads(_pinned_file(pinned, "config.json", token=token, cache_dir=cache_dir))
    if not isinstance(config, dict):
        raise CheckpointError(f"config.json of {pinned.repo_id} is not a JSON object")
    return config


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
    small shards is weight data). Sharded repos are read through their index. Headers of a
    commit read before come from the cache (`merging.hub.pinned`) once `token` has pinned it.

    Returns:
        `dict[str, TensorHeader]`: tensor name → header, in index order.

    Raises:
        `CheckpointError`: no safetensors weights, or a corrupt header.
        `NotFoundError`, `AuthError`, `GatedRepoAccessError`, `HubError`
    """
    pinned = pin(repo_id, revision, token=token, endpoint=endpoint)
    return pinned_tensor_headers(pinned, token=token)


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
    pinned = pin(repo_id, revision, token=token, endpoint=endpoint)
    return pinned_config(pinned, token=token, cache_dir=cache_dir)


def remote_model(
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> RemoteModel:
    """The commit `revision` points at now, with the tensor headers and config there: one
    pin (one request) for both, then the cache or range requests.

    Raises:
        as `remote_tensor_headers` and `remote_config`.
    """
    pinned = pin(repo_id, revision, token=token, endpoint=endpoint)
    headers = pinned_tensor_headers(pinned, token=token)
    return RemoteModel(pinned.sha, headers, pinned_config(pinned, token=token))


__all__ = [
    "RemoteModel",
    "pinned_config",
    "pinned_tensor_headers",
    "remote_config",
    "remote_model",
    "remote_tensor_headers",
]
