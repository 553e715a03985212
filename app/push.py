"""Pushing a merge job's folder to the Hub, and the card it goes with (no UI).

`validate_push` says up front what the user must fix; `submit_push` hands the upload to the
`JobRunner` (the user's token is a closure variable of its work function only).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from app.jobs import JobContext, JobRunner, JobStore
from app.settings import Settings
from app.workflows import _REPO_ID, InputError, _results_rows, merge_record


def card_text(
    store: JobStore, merge_job: str, *, owner: str | None, model_name: str | None = None
) -> str:
    """The merged model's card (a merge job of `owner`), with the latest evaluation's results."""
    from merging.hub import write_eval_results_to_card

    _, _, folder = merge_record(store, merge_job, owner=owner)
    rows = _results_rows(store, merge_job)
    staging = folder.parent / f".card-{os.getpid()}-{time.monotonic_ns()}"
    staging.mkdir()
    try:
        shutil.copy2(folder / "README.md", staging / "README.md")
        if rows:
            write_eval_results_to_card(staging, rows, model_name=model_name or folder.name)
        return (staging / "README.md").read_text(encoding="utf-8")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def validate_push(
    store: JobStore,
    settings: Settings,
    merge_job: str,
    repo_id: str,
    *,
    token: str | None,
    exist_ok: bool,
    owner: str | None,
) -> None:
    """Raise `InputError` / `HubError` for what the user must fix before pushing."""
    if not token:
        where = "Sign in with Hugging Face" if settings.on_spaces else "Paste a Hub write token"
        raise InputError(f"{where} to push: pushing needs a token with write access.")
    merge_record(store, merge_job, owner=owner)
    if not _REPO_ID.match(repo_id or ""):
        raise InputError(f"{repo_id!r} is not a repo id: use namespace/name, e.g. you/my-merge.")
    if exist_ok:
        return
    from huggingface_hub import HfApi

    from merging.errors import RepoExistsError

    api = HfApi(endpoint=settings.hub_endpoint, token=token)
    try:
        exists = api.repo_exists(repo_id)
    except Exception:  # the push itself reports Hub problems precisely
        return
    if exists:
        raise RepoExistsError(
            f"{repo_id} already exists; choose another name or tick 'update if it exists'."
        )


def submit_push(
    runner: JobRunner,
    settings: Settings,
    merge_job: str,
    repo_id: str,
    *,
    private: bool,
    exist_ok: bool,
    token: str | None,
    owner: str | None,
) -> str:
    """Upload the folder of `owner`'s merge (card with evaluation results) to `repo_id`."""
    from merging.hub import push_folder, write_eval_results_to_card

    _, _, folder = merge_record(runner.store, merge_job, owner=owner)
    rows = _results_rows(runner.store, merge_job)
    assert token is not None

    def work(ctx: JobContext) -> dict[str, Any]:
        staging = ctx.output_dir / "upload"
        ctx.progress("prepare", 0, 1)
        _link_tree(folder, staging)
        _name_in_card(staging / "README.md", repo_id)
        if rows:
            write_eval_results_to_card(staging, rows, model_name=repo_id.split("/")[-1])
            ctx.log(f"added {len(rows)} evaluation result(s) to the card")
        ctx.log(f"pushing to {repo_id} ({'private' if private else 'public'})")
        ctx.progress("upload", 0, 1)
        result = push_folder(staging, repo_id=repo_id, token=token, private=private,
                             exist_ok=exist_ok, endpoint=settings.hub_endpoint)  # fmt: skip
        ctx.progress("upload", 1, 1)
        shutil.rmtree(staging, ignore_errors=True)
        ctx.log(f"committed {result.commit_url}")
        return {"output": result.repo_url, **result.model_dump(mode="json"), "repo_id": repo_id}

    params = {"repo_id": repo_id, "private": private, "exist_ok": exist_ok}
    return runner.submit("push", work, owner=owner, params=params, parent=merge_job)


def _name_in_card(card: Path, repo_id: str) -> None:
    """Put the repo id into the card's usage snippet (written before the repo existed)."""
    from merging.card import MODEL_ID_PLACEHOLDER

    if card.is_file():
        text = card.read_text(encoding="utf-8")
        card.write_text(text.replace(MODEL_ID_PLACEHOLDER, repo_id), encoding="utf-8")


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link files into `target` (copy the card, which gets edited)."""
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if not path.is_file():
            continue
        if path.name == "README.md":
            shutil.copy2(path, target / path.name)
            continue
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copy2(path, target / path.name)
