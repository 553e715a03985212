"""File routes: the git-lfs batch API (basic transfer) and `resolve` downloads with Ranges."""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from . import _input
from ._input import json_body
from ._state import base_url, hub
from .errors import HubHTTPError
from .storage import CommitConflict, FileEntry, RevisionNotFound

router = APIRouter()
CHUNK = 1 << 20
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
OID = re.compile(r"^[0-9a-f]{64}$")


# ---------------------------------------------------------------------- git-lfs
async def _batch(request: Request, repo_type: str, repo_id: str) -> JSONResponse:
    state = hub(request)
    state.auth.check_write(request, state.meta(repo_type, repo_id))
    body = await json_body(request)
    if body.get("operation") != "upload":
        raise HubHTTPError(400, "Only the upload operation is supported")
    items = body.get("objects", [])
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise HubHTTPError(400, "'objects' must be a list of {oid, size} objects")
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    verify = f"{base_url(request)}/{prefix}{repo_id}.git/info/lfs/verify"
    objects = []
    for item in items:
        oid, size = str(item.get("oid", ""))[:100], item.get("size", -1)
        if not OID.match(oid) or isinstance(size, bool) or not isinstance(size, int) or size < 0:
            size = size if isinstance(size, int) and not isinstance(size, bool) else 0
            error = {"code": 422, "message": "invalid oid or size"}
            objects.append({"oid": oid, "size": max(size, 0), "error": error})
        elif state.store.has_blob(oid, size):
            objects.append({"oid": oid, "size": size})  # already stored: nothing to upload
        else:
            href = f"{base_url(request)}/_lfs/{oid}?size={size}&sig={state.sign(oid, size)}"
            actions = {"upload": {"href": href}, "verify": {"href": verify}}
            objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
    return JSONResponse({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})


@router.post("/datasets/{namespace}/{name}.git/info/lfs/objects/batch")
async def dataset_batch(request: Request, namespace: str, name: str) -> JSONResponse:
    return await _batch(request, "dataset", f"{namespace}/{name}")


@router.post("/{namespace}/{name}.git/info/lfs/objects/batch")
async def model_batch(request: Request, namespace: str, name: str) -> JSONResponse:
    return await _batch(request, "model", f"{namespace}/{name}")


@router.put("/_lfs/{oid}")
async def lfs_upload(request: Request, oid: str, size: int, sig: str) -> JSONResponse:
    state = hub(request)
    if not OID.match(oid) or not hmac.compare_digest(sig, state.sign(oid, size)):
        raise HubHTTPError(403, "Invalid or expired upload URL")
    if not state.store.has_blob(oid, size):
        pending = state.store.new_upload(oid, size)
        try:
            async for chunk in request.stream():
                pending.write(chunk)
        except BaseException:
            pending.abort()
            raise
        try:
            pending.finish()
        except CommitConflict as e:
            raise HubHTTPError(400, str(e)) from None
    return JSONResponse({})


async def _verify(request: Request, repo_type: str, repo_id: str) -> JSONResponse:
    state = hub(request)
    state.auth.check_write(request, state.meta(repo_type, repo_id))
    body = await json_body(request)
    try:
        oid, size = _input.oid(body.get("oid")), _input.size(body.get("size"))
    except ValueError as e:
        raise HubHTTPError(400, str(e)) from None
    if not state.store.has_blob(oid, size):
        raise HubHTTPError(404, "Object not found")
    return JSONResponse({})


@router.post("/datasets/{namespace}/{name}.git/info/lfs/verify")
async def dataset_verify(request: Request, namespace: str, name: str) -> JSONResponse:
    return await _verify(request, "dataset", f"{namespace}/{name}")


@router.post("/{namespace}/{name}.git/info/lfs/verify")
async def model_verify(request: Request, namespace: str, name: str) -> JSONResponse:
    return await _verify(request, "model", f"{namespace}/{name}")


# ---------------------------------------------------------------------- resolve
def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Inclusive (start, end) of a single `bytes=` range; None for the whole file.

    Raises:
        `HubHTTPError`: 416 when the range cannot be satisfied.
    """
    if not header:
        return None
    match = RANGE.match(header.strip())
    if match is None or match.groups() == ("", ""):
        return None  # unsupported forms (multi-range): serve the whole file, as RFC 9110 allows
    first, last = match.groups()
    if first == "":
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise HubHTTPError(416, "Requested range not satisfiable")
    return start, end


def _read_range(
    request: Request, key: str, entry: FileEntry, start: int, end: int
) -> Iterator[bytes]:
    control, store = hub(request).control, hub(request).store
    with store.open_blob(entry.sha256) as handle:
        handle.seek(start)
        remaining = end - start + 1
        while remaining > 0:
            chunk = handle.read(min(CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            control.count_bytes(key, len(chunk))
            yield chunk


def _resolve_file(
    request: Request, repo_type: str, repo_id: str, revision: str, path: str
) -> Response:
    state = hub(request)
    meta = state.meta(repo_type, repo_id)
    state.auth.check_download(request, meta, path)
    try:
        sha = state.store.resolve(repo_type, repo_id, revision)
    except RevisionNotFound:
        raise HubHTTPError(404, f"Invalid rev id: {revision}", code="RevisionNotFound") from None
    entry = state.store.get_commit(repo_type, repo_id, sha).files.get(path)
    if entry is None:
        raise HubHTTPError(404, f"Entry not found: {path}", code="EntryNotFound")
    headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes", "ETag": f'"{entry.git_oid}"'}
    if entry.lfs:
        headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        headers["ETag"] = f'"{entry.sha256}"'
    span = _byte_range(request.headers.get("range"), entry.size)
    start, end = span if span is not None else (0, entry.size - 1)
    headers["Content-Length"] = str(max(end - start + 1, 0))
    status = 200
    if span is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    body = _read_range(request, f"{repo_id}/{path}", entry, start, end)
    media = "application/octet-stream"
    return StreamingResponse(body, status_code=status, headers=headers, media_type=media)


@router.api_route(
    "/datasets/{namespace}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"]
)
def dataset_resolve(
    request: Request, namespace: str, name: str, revision: str, path: str
) -> Response:
    return _resolve_file(request, "dataset", f"{namespace}/{name}", revision, path)


@router.api_route("/{namespace}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
def model_resolve(
    request: Request, namespace: str, name: str, revision: str, path: str
) -> Response:
    return _resolve_file(request, "model", f"{namespace}/{name}", revision, path)
