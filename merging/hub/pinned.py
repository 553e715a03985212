"""Pin a repo to a commit with the caller's token, and cache small files read at that commit.

A commit sha names immutable content, so bytes read at ``(endpoint, repo, sha, file)`` can
never go stale: safetensors headers, the shard index and ``config.json`` are kept in a bounded
per-process LRU (`PINNED_CACHE`) and the next `hubmerge check` of the same commit reads no
header over HTTP.

Access: the cache is reached only through a `PinnedRepo`, and only `pin` makes one, after
the Hub answered the caller's *own* token for that repo and revision (one ``model_info``
request per call, never cached). A caller whose token cannot see a private repo
fails in `pin` and never reaches the bytes another caller's token fetched. A gated repo's
metadata is visible to every token while its files are not, so reads of a gated repo bypass
the cache and go to the Hub with the caller's token each time. No token is part of a key,
stored, or logged.

>>> pinned = pin("HuggingFaceTB/SmolLM2-135M", token=None)  # doctest: +SKIP
>>> read_pinned(pinned, "config.json", "file", fetch=lambda: b"{}")  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import huggingface_hub.utils as hf_utils
from huggingface_hub import constants, hf_hub_url

from merging.errors import HubError
from merging.hub._calls import auth_token, call, hub_api

MAX_CACHE_BYTES = 64 * 2**20  # a 70B model's shard headers are ~2 MB in all
MAX_CACHE_ENTRIES = 4096
CacheKey = tuple[str, str, str, str, str]  # endpoint, repo id, sha, filename, part


@dataclass(frozen=True)
class PinnedRepo:
    """A model repo at one commit, as the caller's token saw it just now (`pin`).

    Args:
        repo_id (`str`): e.g. ``"alice/tiny"``.
        sha (`str`): the 40-hex commit every read goes to.
        endpoint (`str`): the Hub's base URL (normalised: no trailing slash).
        files (`Mapping[str, int]`): path → size of every file at the commit.
        gated (`bool`): the repo is gated: its files are never served from the cache.
    """

    repo_id: str
    sha: str
    endpoint: str
    files: Mapping[str, int] = field(repr=False)
    gated: bool = False


def endpoint_url(endpoint: str | None) -> str:
    """The Hub URL a call with `endpoint` talks to (`HF_ENDPOINT` when None)."""
    return (endpoint or constants.ENDPOINT).rstrip("/")


def pin(
    repo_id: str,
    revision: str | None = None,
    *,
    token: str | None = None,
    endpoint: str | None = None,
) -> PinnedRepo:
    """Resolve `revision` (default: the main branch) to a commit and list its files, with
    the caller's `token`: one ``model_info`` request, made on every call.

    Raises:
        `NotFoundError`, `AuthError`, `GatedRepoAccessError`, `HubError`
    """
    api = hub_api(token, endpoint)
    info = call(
        lambda: api.model_info(repo_id, revision=revision, files_metadata=True),
        action="resolving",
        repo_id=repo_id,
        revision=revision,
    )
    if not info.sha:
        raise HubError(f"the Hub returned no commit for {repo_id}@{revision or 'main'}")
    files = {s.rfilename: s.size or 0 for s in info.siblings or []}
    gated = bool(info.gated)  # False, or "auto" / "manual"
    return PinnedRepo(repo_id, info.sha, endpoint_url(endpoint), MappingProxyType(files), gated)


def require_file_access(pinned: PinnedRepo, filename: str, *, token: str | None) -> None:
    """Ask the Hub (a HEAD of `filename`, with `token`) whether this caller may read the
    files of a gated repo: pinning succeeds for every token there, and the HF disk cache
    answers a pinned sha without asking. Nothing to ask for a repo that is not gated.

    Raises:
        `GatedRepoAccessError`, `AuthError`, `NotFoundError`, `HubError`
    """
    if not pinned.gated:
        return
    url = hf_hub_url(pinned.repo_id, filename, revision=pinned.sha, endpoint=pinned.endpoint)
    headers = hf_utils.build_hf_headers(token=auth_token(token))

    def head() -> None:
        response = hf_utils.get_session().head(url, headers=headers, follow_redirects=False)
        hf_utils.hf_raise_for_status(response)

    call(head, action=f"reading {filename} from", repo_id=pinned.repo_id, revision=pinned.sha)


class ByteCache:
    """A thread-safe LRU of immutable byte strings, bounded in bytes and in entries."""

    def __init__(self, *, max_bytes: int, max_entries: int) -> None:
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self._items: OrderedDict[CacheKey, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: CacheKey) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: CacheKey, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes += len(value) - (len(old) if old is not None else 0)
            self._items[key] = value
            while self._bytes > self.max_bytes or len(self._items) > self.max_entries:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= len(evicted)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes


PINNED_CACHE = ByteCache(max_bytes=MAX_CACHE_BYTES, max_entries=MAX_CACHE_ENTRIES)


def read_pinned(
    pinned: PinnedRepo, filename: str, part: str, *, fetch: Callable[[], bytes]
) -> bytes:
    """The bytes of `part` of `filename` at the pinned commit: from the cache, else `fetch`
    (which reads them with the token that pinned the repo) and kept; a gated repo's always
    from `fetch`.

    Args:
        part (`str`): what of the file the bytes are, e.g. ``"file"`` or ``"header"``.
    """
    if pinned.gated:
        return fetch()
    key = (pinned.endpoint, pinned.repo_id, pinned.sha, filename, part)
    value = PINNED_CACHE.get(key)
    if value is None:
        value = fetch()
        PINNED_CACHE.put(key, value)
    return value


__all__ = [
    "PINNED_CACHE",
    "ByteCache",
    "PinnedRepo",
    "endpoint_url",
    "pin",
    "read_pinned",
    "require_file_access",
]
