"""Model metadata the Hub derives from a commit's files: card data, config, safetensors summary."""

from __future__ import annotations

import json
import logging
import struct
import threading
from collections import OrderedDict
from typing import Any

import yaml

from .storage import Commit, RepoStore

logger = logging.getLogger(__name__)

MAX_HEADER_BYTES = 100_000_000
MAX_REMEMBERED = 4096  # commits whose derived metadata is kept (`commit_metadata`)
Metadata = tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None]
_remembered: OrderedDict[tuple[str, str, bool], Metadata] = OrderedDict()
_lock = threading.Lock()


def parse_front_matter(text: str) -> dict[str, Any] | None:
    """The YAML metadata block at the top of a model card, or None if there is none.

    Raises:
        `yaml.YAMLError`: if the block exists but is not valid YAML.
    """
    if not text.startswith("---"):
        return None
    lines = text.splitlines()
    for end, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            data = yaml.safe_load("\n".join(lines[1:end]))
            if data is None:
                return {}
            if not isinstance(data, dict):
                raise yaml.YAMLError("card metadata must be a mapping")
            return data
    return None


def _read_small(
    store: RepoStore, commit: Commit, path: str, limit: int = 5_000_000
) -> bytes | None:
    entry = commit.files.get(path)
    if entry is None or entry.size > limit:
        return None
    with store.open_blob(entry.sha256) as handle:
        return handle.read()


def card_data(store: RepoStore, commit: Commit) -> dict[str, Any] | None:
    """The README front matter of a commit (None if absent or unreadable)."""
    raw = _read_small(store, commit, "README.md")
    if raw is None:
        return None
    try:
        return parse_front_matter(raw.decode("utf-8", errors="replace"))
    except yaml.YAMLError:
        logger.warning("unreadable model card metadata in commit %s", commit.sha)
        return None


def config_summary(store: RepoStore, commit: Commit) -> dict[str, Any] | None:
    """`architectures` and `model_type` of config.json, as the Hub's `config` field shows them."""
    raw = _read_small(store, commit, "config.json")
    if raw is None:
        return None
    try:
        config = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(config, dict):
        return None
    keys = ("architectures", "model_type", "adapter_config")
    return {key: config[key] for key in keys if key in config}


def _safetensors_header(store: RepoStore, sha256: str) -> dict[str, Any] | None:
    with store.open_blob(sha256) as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            return None
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            return None
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            return None
    return header if isinstance(header, dict) else None


def safetensors_summary(store: RepoStore, commit: Commit) -> dict[str, Any] | None:
    """Parameter counts per dtype over all `.safetensors` files (the Hub's `safetensors` field)."""
    counts: dict[str, int] = {}
    for path, entry in commit.files.items():
        if not path.endswith(".safetensors"):
            continue
        header = _safetensors_header(store, entry.sha256)
        if header is None:
            continue
        for name, info in header.items():
            if name == "__metadata__" or not isinstance(info, dict):
                continue
            count = 1
            for dim in info.get("shape", []):
                count *= int(dim)
            counts[info["dtype"]] = counts.get(info["dtype"], 0) + count
    if not counts:
        return None
    return {"parameters": counts, "total": sum(counts.values())}


def commit_metadata(store: RepoStore, commit: Commit, *, model: bool) -> Metadata:
    """(`card_data`, `config_summary`, `safetensors_summary`) of a commit, computed once per
    commit (a commit never changes; the last two only for models): every model_info and
    every search hit needs them, and the summary reads each shard's header. Read-only.
    """
    key = (str(store.root), commit.sha, model)
    with _lock:
        known = _remembered.get(key)
        if known is not None:
            _remembered.move_to_end(key)
            return known
    card = card_data(store, commit)
    metadata = (card, config_summary(store, commit), safetensors_summary(store, commit)) \
        if model else (card, None, None)  # fmt: skip
    with _lock:
        _remembered[key] = metadata
        while len(_remembered) > MAX_REMEMBERED:
            _remembered.popitem(last=False)
    return metadata
