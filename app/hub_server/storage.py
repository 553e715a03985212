"""On-disk repository store for the local Hub-compatible server.

Layout under ``data_dir``::

    blobs/<sha256[:2]>/<sha256>                  content-addressed file contents
    repos/<type>s/<namespace>/<name>/repo.json   visibility, gating, owner, creation time
    repos/<type>s/<namespace>/<name>/commits/<sha1>.json   one manifest per commit
    repos/<type>s/<namespace>/<name>/refs/<branch>         40-hex commit sha of the branch head

A commit writes its blobs first, then its manifest, then replaces the ref with `os.replace`.
A crash at any point therefore leaves the previous revision readable and complete; stray
blobs or manifests of an unfinished commit are harmless. One lock per repository serialises
commits, so concurrent commits to one repo never lose each other's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
LFS_MIN_SIZE = 10_000_000
LFS_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".npy",
    ".npz", ".pkl", ".pickle", ".zip", ".gz", ".tar", ".tgz", ".model", ".parquet", ".arrow",
)  # fmt: skip
GITATTRIBUTES = "".join(
    f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES
)


class StoreError(Exception):
    """Base class of the store's errors; routes turn them into HTTP answers."""


class RepoNotFound(StoreError):
    """The repository does not exist."""


class RevisionNotFound(StoreError):
    """The branch or commit does not exist in the repository."""


class RepoExists(StoreError):
    """A repository with this id already exists."""


class CommitConflict(StoreError):
    """The commit's parent is not the branch head, or it names a missing LFS object."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit: where its bytes live and how it was uploaded."""

    sha256: str
    size: int
    lfs: bool
    git_oid: str

    def pointer(self) -> bytes:
        """The git-lfs pointer file that git would store for this entry."""
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
            f"size {self.size}\n"
        ).encode()


@dataclass(frozen=True)
class Commit:
    """An immutable snapshot: commit metadata plus the full path → file manifest."""

    sha: str
    parent: str | None
    message: str
    created_at: str
    files: dict[str, FileEntry] = field(default_factory=dict)


@dataclass
class RepoMeta:
    """Repository settings stored in ``repo.json``."""

    repo_type: str
    repo_id: str
    owner: str
    private: bool = False
    gated: bool | str = False
    created_at: str = ""


@dataclass(frozen=True)
class Addition:
    """A file to add in a commit: either inline bytes, or an already uploaded LFS object."""

    path: str
    content: bytes | None = None
    lfs_oid: str | None = None
    lfs_size: int | None = None


def now_iso() -> str:
    """The current UTC time in the Hub's format (`2024-01-31T12:00:00.000Z`)."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def git_blob_oid(content: bytes) -> str:
    """The git blob sha1 of `content`, which the Hub reports as a regular file's oid."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()


def wants_lfs(path: str, size: int) -> bool:
    """Whether the Hub would store `path` through LFS (by size or by binary extension)."""
    return size >= LFS_MIN_SIZE or path.lower().endswith(LFS_SUFFIXES)


class PendingBlob:
    """A blob being received: written to a temp file, hashed, then renamed into place."""

    def __init__(self, target: Path, expected_sha256: str, expected_size: int) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        self._target, self._sha256, self._size = target, expected_sha256, expected_size
        self._digest, self._received = hashlib.sha256(), 0
        self._file = tempfile.NamedTemporaryFile(dir=target.parent, delete=False, prefix=".up-")  # noqa: SIM115 (closed in finish/abort)

    def write(self, chunk: bytes) -> None:
        """Append received bytes."""
        self._digest.update(chunk)
        self._received += len(chunk)
        self._file.write(chunk)

    def finish(self) -> None:
        """Store the blob.

        Raises:
            `CommitConflict`: if the bytes do not match the announced oid/size (nothing is kept).
        """
        self._file.close()
        if self._digest.hexdigest() != self._sha256 or self._received != self._size:
            os.unlink(self._file.name)
            raise CommitConflict("uploaded bytes do not match the announced oid/size")
        os.replace(self._file.name, self._target)

    def abort(self) -> None:
        """Drop a partial upload."""
        self._file.close()
        Path(self._file.name).unlink(missing_ok=True)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, prefix=".tmp-") as tmp:
        tmp.write(data)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, path)


class RepoStore:
    """Repositories, commits and blobs kept under one data directory.

    Args:
        data_dir (`str` or `Path`):
            Root directory; created if missing. Everything the server knows lives here.
    """

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.root = Path(data_dir)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._commit_cache: dict[tuple[str, str], Commit] = {}

    # ----------------------------------------------------------------- blobs
    def blob_path(self, sha256: str) -> Path:
        """Where the blob with this sha256 lives (it may not exist)."""
        return self.root / "blobs" / sha256[:2] / sha256

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        """Whether a blob is stored (and, if `size` is given, has that size)."""
        path = self.blob_path(sha256)
        return path.is_file() and (size is None or path.stat().st_size == size)

    def put_bytes(self, content: bytes) -> str:
        """Store `content` and return its sha256."""
        sha = hashlib.sha256(content).hexdigest()
        if not self.has_blob(sha, len(content)):
            _write_atomic(self.blob_path(sha), content)
        return sha

    def new_upload(self, expected_sha256: str, expected_size: int) -> PendingBlob:
        """Start a streamed upload that is stored only if its hash and size are as announced."""
        return PendingBlob(self.blob_path(expected_sha256), expected_sha256, expected_size)

    def open_blob(self, sha256: str) -> BinaryIO:
        """Open a stored blob for reading."""
        return self.blob_path(sha256).open("rb")

    # ----------------------------------------------------------------- repos
    def _repo_dir(self, repo_type: str, repo_id: str) -> Path:
        return self.root / "repos" / f"{repo_type}s" / repo_id

    def _lock(self, repo_type: str, repo_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(f"{repo_type}/{repo_id}", threading.Lock())

    def get_meta(self, repo_type: str, repo_id: str) -> RepoMeta:
        """Settings of a repository.

        Raises:
            `RepoNotFound`: if it does not exist.
        """
        path = self._repo_dir(repo_type, repo_id) / "repo.json"
        if not path.is_file():
            raise RepoNotFound(repo_id)
        return RepoMeta(**json.loads(path.read_text()))

    def save_meta(self, meta: RepoMeta) -> None:
        """Persist changed settings (visibility, gating)."""
        path = self._repo_dir(meta.repo_type, meta.repo_id) / "repo.json"
        _write_atomic(path, json.dumps(asdict(meta)).encode())

    def create_repo(self, repo_type: str, repo_id: str, *, owner: str, private: bool) -> RepoMeta:
        """Create a repository with an initial commit holding a `.gitattributes` file.

        Raises:
            `RepoExists`: if the id is taken.
        """
        with self._lock(repo_type, repo_id):
            if (self._repo_dir(repo_type, repo_id) / "repo.json").is_file():
                raise RepoExists(repo_id)
            meta = RepoMeta(repo_type, repo_id, owner, private=private, created_at=now_iso())
            initial = [Addition(".gitattributes", content=GITATTRIBUTES.encode())]
            self._commit_locked(meta, "main", initial, [], "initial commit", parent=None)
            self.save_meta(meta)  # written last: the repo exists only once it is complete
            return meta

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        """Delete a repository (its blobs stay: they may be shared)."""
        self.get_meta(repo_type, repo_id)
        with self._lock(repo_type, repo_id):
            repo_dir = self._repo_dir(repo_type, repo_id)
            (repo_dir / "repo.json").unlink()
            trash = repo_dir.with_name(f".deleted-{repo_dir.name}-{secrets.token_hex(4)}")
            os.replace(repo_dir, trash)
            for path in sorted(trash.rglob("*"), reverse=True):
                path.rmdir() if path.is_dir() else path.unlink()
            trash.rmdir()

    def list_repos(self, repo_type: str) -> Iterator[RepoMeta]:
        """All repositories of one type, in id order."""
        for path in sorted((self.root / "repos" / f"{repo_type}s").glob("*/*/repo.json")):
            yield RepoMeta(**json.loads(path.read_text()))

    # ----------------------------------------------------------------- refs and commits
    def branches(self, repo_type: str, repo_id: str) -> dict[str, str]:
        """Branch name → head commit sha."""
        refs = self._repo_dir(repo_type, repo_id) / "refs"
        return {p.name: p.read_text().strip() for p in sorted(refs.iterdir()) if p.is_file()}

    def resolve(self, repo_type: str, repo_id: str, revision: str) -> str:
        """The commit sha a branch name or commit sha points at.

        Raises:
            `RepoNotFound`, `RevisionNotFound`
        """
        self.get_meta(repo_type, repo_id)
        repo_dir = self._repo_dir(repo_type, repo_id)
        if BRANCH.match(revision) and (repo_dir / "refs" / revision).is_file():
            return (repo_dir / "refs" / revision).read_text().strip()
        if COMMIT_SHA.match(revision) and (repo_dir / "commits" / f"{revision}.json").is_file():
            return revision
        raise RevisionNotFound(revision)

    def get_commit(self, repo_type: str, repo_id: str, sha: str) -> Commit:
        """Load one commit's manifest (cached: commits never change)."""
        key = (f"{repo_type}/{repo_id}", sha)
        if key not in self._commit_cache:
            path = self._repo_dir(repo_type, repo_id) / "commits" / f"{sha}.json"
            raw = json.loads(path.read_text())
            files = {p: FileEntry(**entry) for p, entry in raw.pop("files").items()}
            self._commit_cache[key] = Commit(files=files, **raw)
        return self._commit_cache[key]

    def create_branch(self, repo_type: str, repo_id: str, branch: str, *, start: str) -> None:
        """Create `branch` at the commit `start` resolves to.

        Raises:
            `RepoExists`: if the branch exists; `RevisionNotFound` if `start` does not.
        """
        if not BRANCH.match(branch):
            raise RevisionNotFound(branch)
        with self._lock(repo_type, repo_id):
            sha = self.resolve(repo_type, repo_id, start)
            ref = self._repo_dir(repo_type, repo_id) / "refs" / branch
            if ref.exists():
                raise RepoExists(branch)
            _write_atomic(ref, sha.encode())

    def commit(
        self,
        repo_type: str,
        repo_id: str,
        branch: str,
        *,
        additions: list[Addition],
        deletions: list[str],
        message: str,
        parent: str | None = None,
    ) -> str:
        """Apply additions and deletions on top of `branch` and move the branch to the new commit.

        Args:
            deletions (`list[str]`): paths to delete; a path ending in `/` deletes a folder.
            parent (`str`, *optional*): if given, refuse the commit unless it is the branch head.

        Returns:
            `str`: the new commit's 40-hex sha.

        Raises:
            `RepoNotFound`, `RevisionNotFound`, `CommitConflict`
        """
        meta = self.get_meta(repo_type, repo_id)
        with self._lock(repo_type, repo_id):
            return self._commit_locked(meta, branch, additions, deletions, message, parent=parent)

    def _commit_locked(
        self,
        meta: RepoMeta,
        branch: str,
        additions: list[Addition],
        deletions: list[str],
        message: str,
        *,
        parent: str | None,
    ) -> str:
        repo_dir = self._repo_dir(meta.repo_type, meta.repo_id)
        ref = repo_dir / "refs" / branch
        head = ref.read_text().strip() if ref.is_file() else None
        if head is None and (repo_dir / "repo.json").is_file():
            raise RevisionNotFound(branch)
        if parent is not None and parent != head:
            raise CommitConflict(f"parent commit {parent} is not the head of {branch}")
        files = dict(self.get_commit(meta.repo_type, meta.repo_id, head).files) if head else {}
        for path in deletions:
            if path.endswith("/"):
                files = {p: e for p, e in files.items() if not p.startswith(path)}
            else:
                files.pop(path, None)
        for addition in additions:
            files[addition.path] = self._store_addition(addition)
        created_at = now_iso()
        seed = json.dumps([head, message, created_at, secrets.token_hex(8), sorted(files)])
        sha = hashlib.sha1(seed.encode(), usedforsecurity=False).hexdigest()
        manifest = {"sha": sha, "parent": head, "message": message, "created_at": created_at}
        manifest["files"] = {p: asdict(e) for p, e in sorted(files.items())}
        _write_atomic(repo_dir / "commits" / f"{sha}.json", json.dumps(manifest).encode())
        _write_atomic(ref, sha.encode())  # the commit becomes visible only here
        return sha

    def _store_addition(self, addition: Addition) -> FileEntry:
        if addition.content is not None:
            content = addition.content
            sha = self.put_bytes(content)
            if wants_lfs(addition.path, len(content)) and content:
                entry = FileEntry(sha, len(content), True, "")
                return FileEntry(sha, len(content), True, git_blob_oid(entry.pointer()))
            return FileEntry(sha, len(content), False, git_blob_oid(content))
        oid, size = addition.lfs_oid or "", addition.lfs_size
        if size is None and self.has_blob(oid):
            size = self.blob_path(oid).stat().st_size
        if size is None or not self.has_blob(oid, size):
            raise CommitConflict(f"LFS object for {addition.path!r} was never uploaded")
        entry = FileEntry(oid, size, True, "")
        return FileEntry(oid, size, True, git_blob_oid(entry.pointer()))
