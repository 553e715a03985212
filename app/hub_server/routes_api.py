"""The `/api/...` routes: repos, metadata, trees, refs, upload modes and commits."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from . import _cards, _input
from ._input import json_body, text
from ._state import base_url, hub, repo_type_of, repo_url
from .errors import HubHTTPError
from .storage import (
    NAME,
    Addition,
    CommitConflict,
    RepoExists,
    RepoMeta,
    RevisionNotFound,
    wants_lfs,
)

logger = logging.getLogger(__name__)
router = APIRouter()
REPO = "/api/{kind}/{namespace}/{name}"


def _resolve(request: Request, repo_type: str, repo_id: str, revision: str) -> tuple[RepoMeta, str]:
    state = hub(request)
    meta = state.meta(repo_type, repo_id)
    state.auth.check_read(request, meta)
    try:
        return meta, state.store.resolve(repo_type, repo_id, revision)
    except RevisionNotFound:
        raise HubHTTPError(404, f"Invalid rev id: {revision}", code="RevisionNotFound") from None


# ---------------------------------------------------------------------- repos
@router.post("/api/repos/create")
async def create_repo(request: Request) -> JSONResponse:
    state = hub(request)
    user = state.auth.require_user(request)
    body = await json_body(request)
    namespace, name = text(body, "organization") or user, text(body, "name")
    repo_type = text(body, "type") or "model"
    if not NAME.match(name) or not NAME.match(namespace) or repo_type not in ("model", "dataset"):
        raise HubHTTPError(400, "Invalid repo name or type")
    if not state.auth.is_open and namespace != user:
        raise HubHTTPError(403, f"You don't have the rights to create a repo under {namespace!r}")
    repo_id = f"{namespace}/{name}"
    url = repo_url(request, repo_type, repo_id)
    private = body.get("visibility") == "private" or bool(body.get("private"))
    try:
        state.store.create_repo(repo_type, repo_id, owner=user, private=private)
    except RepoExists:
        raise HubHTTPError(409, "You already created this repo", extra={"url": url}) from None
    logger.info("created %s repo %s (private=%s)", repo_type, repo_id, private)
    return JSONResponse({"url": url, "name": repo_id, "id": repo_id})


@router.delete("/api/repos/delete")
async def delete_repo(request: Request) -> JSONResponse:
    state = hub(request)
    body = await json_body(request)
    repo_type = text(body, "type") or "model"
    namespace = text(body, "organization") or state.auth.require_user(request)
    repo_id = f"{namespace}/{text(body, 'name')}"
    meta = state.meta(repo_type, repo_id)
    state.auth.check_write(request, meta)
    state.store.delete_repo(repo_type, repo_id)
    return JSONResponse({})


@router.put(REPO + "/settings")
async def update_settings(request: Request, kind: str, namespace: str, name: str) -> JSONResponse:
    state = hub(request)
    meta = state.meta(repo_type_of(kind), f"{namespace}/{name}")
    state.auth.check_write(request, meta)
    body = await json_body(request)
    if body.get("gated") not in (None, False, "auto", "manual"):
        raise HubHTTPError(400, "'gated' must be false, 'auto' or 'manual'")
    if "gated" in body:
        meta.gated = body["gated"] or False
    if "private" in body:
        meta.private = bool(body["private"])
    if "visibility" in body:
        if body["visibility"] not in ("private", "public"):
            raise HubHTTPError(400, "'visibility' must be 'private' or 'public'")
        meta.private = body["visibility"] == "private"
    state.store.save_meta(meta)
    return JSONResponse({})


@router.post("/api/validate-yaml")
async def validate_yaml(request: Request) -> JSONResponse:
    body = await json_body(request)
    try:
        _cards.parse_front_matter(text(body, "content"))
    except yaml.YAMLError as e:
        errors = [{"message": f"Invalid YAML in the card metadata: {e}"}]
        return JSONResponse({"errors": errors, "error": "Invalid metadata"}, status_code=400)
    return JSONResponse({"errors": [], "warnings": []})


@router.get("/api/whoami-v2")
async def whoami(request: Request) -> JSONResponse:
    user = hub(request).auth.require_user(request)
    token_info = {"displayName": "local", "role": "write"}
    return JSONResponse(
        {
            "type": "user",
            "id": user,
            "name": user,
            "fullname": user,
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": token_info},
        }
    )


# ---------------------------------------------------------------------- metadata
def repo_info_json(
    request: Request, meta: RepoMeta, sha: str, *, blobs: bool = False
) -> dict[str, Any]:
    """The `/api/models/{id}` document of `meta` at commit `sha`."""
    store = hub(request).store
    commit = store.get_commit(meta.repo_type, meta.repo_id, sha)
    card, config, summary = _cards.commit_metadata(store, commit, model=meta.repo_type == "model")
    library = (card or {}).get("library_name")
    if library is None and "config.json" in commit.files:
        library = "transformers"
    if library is None and "adapter_config.json" in commit.files:
        library = "peft"
    tags = [str(t) for t in (card or {}).get("tags", []) or []]
    tags += [t for t in (library, "safetensors" if summary else None) if t and t not in tags]
    siblings = []
    for path, entry in commit.files.items():
        sibling: dict[str, Any] = {"rfilename": path}
        if blobs:
            sibling.update(size=entry.size, blobId=entry.git_oid)
            if entry.lfs:
                lfs = {"size": entry.size, "sha256": entry.sha256}
                sibling["lfs"] = {**lfs, "pointerSize": len(entry.pointer())}
        siblings.append(sibling)
    info: dict[str, Any] = {
        "_id": meta.repo_id,
        "id": meta.repo_id,
        "modelId": meta.repo_id,
        "author": meta.repo_id.split("/")[0],
        "sha": sha,
        "lastModified": commit.created_at,
        "createdAt": meta.created_at,
        "private": meta.private,
        "gated": meta.gated,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": tags,
        "siblings": siblings,
    }
    optional = {
        "library_name": library,
        "pipeline_tag": (card or {}).get("pipeline_tag"),
        "cardData": card,
        "config": config,
        "safetensors": summary,
    }
    info.update({key: value for key, value in optional.items() if value is not None})
    return info


@router.get(REPO)
@router.get(REPO + "/revision/{revision}")
async def repo_info(
    request: Request, kind: str, namespace: str, name: str, revision: str = "main"
) -> JSONResponse:
    meta, sha = _resolve(request, repo_type_of(kind), f"{namespace}/{name}", revision)
    blobs = request.query_params.get("blobs", "").lower() in ("1", "true")
    return JSONResponse(repo_info_json(request, meta, sha, blobs=blobs))


@router.get("/api/{kind}")
async def list_repos(request: Request, kind: str) -> JSONResponse:
    state, params = hub(request), request.query_params
    repo_type = repo_type_of(kind)
    search, author = params.get("search", "").lower(), params.get("author")
    filters = set(params.getlist("filter"))
    caller = state.auth.caller(request)
    found = []
    for meta in state.store.list_repos(repo_type):
        if author and meta.repo_id.split("/")[0] != author:
            continue
        if search not in meta.repo_id.lower():
            continue
        if meta.private and not state.auth.is_owner(caller, meta):
            continue
        sha = state.store.branches(repo_type, meta.repo_id).get("main")
        if sha is None:
            continue
        info = repo_info_json(request, meta, sha)
        if filters and not filters <= {*info["tags"], info.get("library_name")}:
            continue
        found.append(info)
    sort = params.get("sort") or "id"
    key = {"lastModified": "lastModified", "createdAt": "createdAt", "likes": "likes"}.get(sort)
    found.sort(key=lambda info: info["id"])
    if key:
        found.sort(key=lambda info: info[key], reverse=params.get("direction", "-1") == "-1")
    try:
        limit = max(0, int(params.get("limit") or 1000))
    except ValueError:
        raise HubHTTPError(400, "'limit' must be an integer") from None
    return JSONResponse(found[:limit])


@router.get(REPO + "/tree/{revision}")
@router.get(REPO + "/tree/{revision}/{path:path}")
async def tree(
    request: Request, kind: str, namespace: str, name: str, revision: str, path: str = ""
) -> JSONResponse:
    meta, sha = _resolve(request, repo_type_of(kind), f"{namespace}/{name}", revision)
    commit = hub(request).store.get_commit(meta.repo_type, meta.repo_id, sha)
    recursive = request.query_params.get("recursive", "").lower() in ("1", "true")
    prefix = f"{path.strip('/')}/" if path.strip("/") else ""
    if prefix and not any(p.startswith(prefix) for p in commit.files):
        raise HubHTTPError(404, f"{path} does not exist on {revision}", code="EntryNotFound")
    entries: dict[str, dict[str, Any]] = {}
    for file_path, entry in commit.files.items():
        if not file_path.startswith(prefix):
            continue
        parts = file_path[len(prefix) :].split("/")
        folders = range(1, len(parts)) if recursive else range(1, min(len(parts), 2))
        for depth in folders:
            folder = prefix + "/".join(parts[:depth])
            entries.setdefault(folder, {"type": "directory", "oid": sha, "size": 0, "path": folder})
        if recursive or len(parts) == 1:
            item: dict[str, Any] = {"type": "file", "oid": entry.git_oid, "size": entry.size}
            item["path"] = file_path
            if entry.lfs:
                item["lfs"] = {"oid": entry.sha256, "size": entry.size}
                item["lfs"]["pointerSize"] = len(entry.pointer())
            entries[file_path] = item
    return JSONResponse([entries[key] for key in sorted(entries)])


@router.get(REPO + "/refs")
async def refs(request: Request, kind: str, namespace: str, name: str) -> JSONResponse:
    state, repo_type, repo_id = hub(request), repo_type_of(kind), f"{namespace}/{name}"
    state.auth.check_read(request, state.meta(repo_type, repo_id))
    branches = [
        {"name": branch, "ref": f"refs/heads/{branch}", "targetCommit": sha}
        for branch, sha in state.store.branches(repo_type, repo_id).items()
    ]
    return JSONResponse({"branches": branches, "converts": [], "tags": [], "pullRequests": []})


@router.post(REPO + "/branch/{branch}")
async def create_branch(
    request: Request, kind: str, namespace: str, name: str, branch: str
) -> JSONResponse:
    state, repo_type, repo_id = hub(request), repo_type_of(kind), f"{namespace}/{name}"
    state.auth.check_write(request, state.meta(repo_type, repo_id))
    body = await json_body(request, empty_ok=True)
    try:
        state.store.create_branch(
            repo_type, repo_id, branch, start=text(body, "startingPoint") or "main"
        )
    except RepoExists:
        raise HubHTTPError(409, f"Branch {branch} already exists") from None
    except RevisionNotFound:
        raise HubHTTPError(400, "Invalid branch name or starting point") from None
    return JSONResponse({})


# ---------------------------------------------------------------------- uploads
@router.post(REPO + "/preupload/{revision}")
async def preupload(
    request: Request, kind: str, namespace: str, name: str, revision: str
) -> JSONResponse:
    state, repo_type, repo_id = hub(request), repo_type_of(kind), f"{namespace}/{name}"
    state.auth.check_write(request, state.meta(repo_type, repo_id))
    files = (await json_body(request)).get("files", [])
    if not isinstance(files, list) or not all(isinstance(item, dict) for item in files):
        raise HubHTTPError(400, "'files' must be a list of {path, size} objects")
    try:
        sha = state.store.resolve(repo_type, repo_id, revision)
        existing = state.store.get_commit(repo_type, repo_id, sha).files
    except RevisionNotFound:
        existing = {}
    answer = []
    for item in files:
        try:
            path = _input.file_path(item.get("path"))
            size = _input.size(item.get("size"), default=0)
        except ValueError as e:
            raise HubHTTPError(400, str(e)) from None
        lfs = wants_lfs(path, size)
        entry = existing.get(path)
        oid = None if entry is None else (entry.sha256 if entry.lfs else entry.git_oid)
        mode = "lfs" if lfs else "regular"
        answer.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
    return JSONResponse({"files": answer, "commitOid": None})


def _parse_commit(lines: list[bytes]) -> tuple[dict[str, Any], list[Addition], list[str]]:
    header: dict[str, Any] = {}
    additions: list[Addition] = []
    deletions: list[str] = []
    for raw in lines:
        if not raw.strip():
            continue
        item = json.loads(raw)
        if not isinstance(item, dict) or not isinstance(item.get("value", {}), dict):
            raise ValueError("each line must be a JSON object {key, value: {...}}")
        key, value = item.get("key"), item.get("value", {})
        if key == "header":
            header = value
        elif key == "file":
            if not isinstance(value.get("content"), str):
                raise ValueError("a file's 'content' must be a base64 string")
            content = base64.b64decode(value["content"], validate=True)
            additions.append(Addition(_input.file_path(value.get("path")), content=content))
        elif key == "lfsFile":
            size = None if value.get("size") is None else _input.size(value["size"])
            path, oid = _input.file_path(value.get("path")), _input.oid(value.get("oid"))
            additions.append(Addition(path, lfs_oid=oid, lfs_size=size))
        elif key == "deletedFile":
            deletions.append(_input.file_path(value.get("path")))
        elif key == "deletedFolder":
            folder = value.get("path")
            folder = folder.rstrip("/") if isinstance(folder, str) else folder
            deletions.append(_input.file_path(folder) + "/")
        else:
            raise ValueError(f"unknown commit operation {str(key)[:80]!r}")
    return header, additions, deletions


@router.post(REPO + "/commit/{revision}")
async def commit(
    request: Request, kind: str, namespace: str, name: str, revision: str
) -> JSONResponse:
    state, repo_type, repo_id = hub(request), repo_type_of(kind), f"{namespace}/{name}"
    state.auth.check_write(request, state.meta(repo_type, repo_id))
    if request.query_params.get("create_pr") in ("1", "true"):
        raise HubHTTPError(400, "Pull requests are not supported by this server")
    try:
        header, additions, deletions = _parse_commit((await request.body()).splitlines())
    except (ValueError, KeyError, binascii.Error, RecursionError) as e:
        raise HubHTTPError(400, f"Malformed commit payload: {str(e)[:300]}") from None
    if not isinstance(header.get("parentCommit"), (str, type(None))):
        raise HubHTTPError(400, "Malformed commit payload: 'parentCommit' must be a string")
    message = str(header.get("summary") or "commit")
    try:
        sha = state.store.commit(
            repo_type,
            repo_id,
            revision,
            additions=additions,
            deletions=deletions,
            message=message,
            parent=header.get("parentCommit"),
        )
    except RevisionNotFound:
        raise HubHTTPError(404, f"Invalid rev id: {revision}", code="RevisionNotFound") from None
    except CommitConflict as e:
        raise HubHTTPError(412 if "parent" in str(e) else 422, str(e)) from None
    logger.info("commit %s on %s@%s (%d files)", sha[:8], repo_id, revision, len(additions))
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    url = f"{base_url(request)}/{prefix}{repo_id}/commit/{sha}"
    return JSONResponse(
        {"success": True, "commitOid": sha, "commitUrl": url, "pullRequestUrl": None}
    )
