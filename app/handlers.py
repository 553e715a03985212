"""UI values → library calls. Errors the user can fix become `gr.Error`; the rest are logged.

Every long action (merge, evaluate, push, greedy soup) is a job (`app.jobs`): the handler
validates its inputs, submits the work and then follows the job, yielding its state and
reporting progress through `gr.Progress`, so an API client sees status updates too. Jobs keep
running when the client goes away; `job_status` polls them by id.

Tokens: a handler receives the user's token (the OAuth sign-in on Spaces, else the token
field) and closes over it in the job's work function; it is never stored or logged.

Ownership: every job belongs to the identity that submitted it (`app.identity`). Job
endpoints take the caller's token as their last input and act only on the caller's own
jobs; another identity's job answers exactly like an unknown id. New job endpoints should
use `Handlers.caller` and `Handlers.owned_job` (or pass ``owner=`` to `app.workflows`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from app import forms, push, workflows
from app.handler_support import _token, as_gr_error, public, user_errors, user_facing
from app.handlers_recipe import RecipeHandlers
from app.identity import Identities
from app.jobs import FINISHED, JobRecord, JobRunner
from app.settings import Settings
from merging.errors import RecipeError

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.2
JOB_COLUMNS = ["id", "kind", "state", "created", "seconds", "output", "error"]


class Handlers(RecipeHandlers):
    """The app's event handlers, bound to one settings object and one job runner."""

    def __init__(
        self, settings: Settings, runner: JobRunner, identities: Identities | None = None
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.store = runner.store
        self.identities = identities or Identities(settings.hub_endpoint)

    # ------------------------------------------------------------------ who is calling
    def caller(
        self,
        token: str | None,
        oauth_token: gr.OAuthToken | None = None,
        request: gr.Request | None = None,
    ) -> str:
        """The caller's identity: their Hub user, else their Gradio session (`app.identity`)."""
        return self.identities.of_request(_token(token, oauth_token), request)

    def owned_job(self, job_id: str | None, owner: str) -> JobRecord | None:
        """The job `job_id` if `owner` owns it; None otherwise, as for an unknown id. The one
        ownership check of every endpoint that takes a job id."""
        job_id = (job_id or "").strip()
        return self.store.get_owned(job_id, owner) if job_id else None

    # ------------------------------------------------------------------ jobs
    def validate_recipe(self, text: str) -> None:
        with user_facing():
            workflows.parse(text, self.settings)

    def merge(
        self,
        recipe: str,
        token: str | None,
        soup_examples: str | None = None,
        soup_metric: str | None = None,
        oauth_token: gr.OAuthToken | None = None,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - gradio's injection idiom
    ) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Merge the models of a recipe into a new model (a job; it streams progress).

        Args:
            recipe: the merge recipe as YAML (method, base model, models and their weights).
            token: a Hub token that can read the recipe's models (blank for public models).
            soup_examples: greedy soup only: a jsonl file of held-out examples (blank: default).
            soup_metric: greedy soup only: what ranks the ingredients on the held-out examples.

        Returns:
            the merge job's id (for `evaluate`, `push` and `job_status`), its log, its record.
        """
        with user_facing():
            job_id = workflows.submit_merge(
                self.runner, self.settings, recipe, token=_token(token, oauth_token),
                examples=(soup_examples or "").strip() or None, metric=soup_metric or "loss",
                owner=self.caller(token, oauth_token, request),
            )  # fmt: skip
        yield from self._follow(job_id, progress, lambda r: (r.id, r.log, public(r)))

    def greedy_soup(
        self,
        models: str,
        examples: str | None,
        metric: str,
        token: str | None,
        oauth_token: gr.OAuthToken | None = None,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """API ``greedy_soup``: models one per line (or comma-separated); examples a jsonl path."""
        with user_facing():
            names = [m.strip() for m in (models or "").replace(",", "\n").splitlines() if m.strip()]
            text = forms.SOUP_NOTE + forms.form_to_yaml("", "linear", "", [[n] for n in names], [])
            job_id = workflows.submit_merge(
                self.runner, self.settings, text, token=_token(token, oauth_token),
                examples=examples or None, metric=metric or "loss",
                owner=self.caller(token, oauth_token, request),
            )  # fmt: skip
        yield from self._follow(job_id, progress, lambda r: (r.id, r.log, public(r)))

    def evaluate(
        self,
        merge_job: str,
        suite: str | None,
        tasks: str | None,
        limit: float | None,
        plot: bool,
        token: str | None,
        oauth_token: gr.OAuthToken | None = None,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> Iterator[tuple[str, str, str | None, dict[str, Any]]]:
        """Evaluate a merge against its base and inputs, side by side (a job; it streams).

        Args:
            merge_job: the id of a finished merge job (what `merge` returned).
            suite: a named evaluation suite, e.g. `demo` (ignored when `tasks` is given).
            tasks: comma-separated lm-evaluation-harness task names; overrides the suite.
            limit: items per task (blank or 0: the suite's own limit).
            plot: also compute the interpolation curve from the base to the merge.
            token: a Hub token that can read the base and input models.

        Returns:
            the evaluation job's id, the results as a markdown table, the plot, the job record.
        """
        with user_facing():
            job_id = workflows.submit_evaluate(
                self.runner, self.settings, (merge_job or "").strip(), suite=suite or None,
                tasks=tasks or None, limit=int(limit) if limit else None, plot=bool(plot),
                token=_token(token, oauth_token), owner=self.caller(token, oauth_token, request),
            )  # fmt: skip

        def render(record: JobRecord) -> tuple[str, str, str | None, dict[str, Any]]:
            result = record.result or {}
            return record.id, result.get("table", ""), result.get("plot"), public(record)

        yield from self._follow(job_id, progress, render)

    def card_preview(
        self,
        merge_job: str,
        token: str | None = None,
        oauth_token: gr.OAuthToken | None = None,
        request: gr.Request | None = None,
    ) -> str:
        """Show the model card that `push` will upload, with the latest evaluation's results.

        Args:
            merge_job: the id of one of your finished merge jobs (what `merge` returned).
            token: your Hub token, the one the merge was started with (blank: this session).

        Returns:
            the card (README.md) as markdown, or a line saying why there is none.
        """
        try:
            owner = self.caller(token, oauth_token, request)
            return push.card_text(self.store, (merge_job or "").strip(), owner=owner)
        except Exception as err:
            if isinstance(err, user_errors()):
                return f"⚠️ {err}"
            logger.exception("card preview failed")
            return "⚠️ could not render the card (see the server log)"

    def validate_push(
        self,
        merge_job: str,
        repo_id: str,
        private: bool,
        exist_ok: bool,
        token: str | None,
        oauth_token: gr.OAuthToken | None = None,
        request: gr.Request | None = None,
    ) -> None:
        with user_facing():
            push.validate_push(
                self.store, self.settings, (merge_job or "").strip(), (repo_id or "").strip(),
                token=_token(token, oauth_token), exist_ok=bool(exist_ok),
                owner=self.caller(token, oauth_token, request),
            )  # fmt: skip

    def push(
        self,
        merge_job: str,
        repo_id: str,
        private: bool,
        exist_ok: bool,
        token: str | None,
        oauth_token: gr.OAuthToken | None = None,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Upload a merge job's model to a Hub repo, with a model card and its results (a job).

        Args:
            merge_job: the id of a finished merge job (what `merge` returned).
            repo_id: the repo to push to, `namespace/name`.
            private: create the repo as private.
            exist_ok: update the repo when it exists already (else that is an error).
            token: a Hub token with write access to the namespace.

        Returns:
            the push job's id, the commit's URL, the job record.
        """
        user_token = _token(token, oauth_token)
        owner = self.caller(token, oauth_token, request)
        with user_facing():
            push.validate_push(
                self.store, self.settings, (merge_job or "").strip(), (repo_id or "").strip(),
                token=user_token, exist_ok=bool(exist_ok), owner=owner,
            )  # fmt: skip
            job_id = push.submit_push(
                self.runner, self.settings, merge_job.strip(), repo_id.strip(),
                private=bool(private), exist_ok=bool(exist_ok), token=user_token, owner=owner,
            )  # fmt: skip

        def render(record: JobRecord) -> tuple[str, str, dict[str, Any]]:
            url = (record.result or {}).get("commit_url", "")
            return record.id, url, public(record)

        yield from self._follow(job_id, progress, render)

    def cancel(
        self,
        job_id: str,
        token: str | None = None,
        oauth_token: gr.OAuthToken | None = None,
        request: gr.Request | None = None,
    ) -> str:
        """Stop one of your queued or running jobs; its partial output is removed.

        Args:
            job_id: the id of the job to stop.
            token: your Hub token, the one the job was started with (blank: this session).

        Returns:
            a status line: cancelling, the job's final state, or "no job" for an unknown id.
        """
        job_id = (job_id or "").strip()
        record = self.owned_job(job_id, self.caller(token, oauth_token, request))
        if record is None:
            return f"no job {job_id!r}"
        if self.runner.cancel(record.id):
            return f"cancelling {job_id}…"
        return f"{job_id} is {record.state}"

    def job_status(
        self,
        job_id: str,
        token: str | None = None,
        oauth_token: gr.OAuthToken | None = None,
        request: gr.Request | None = None,
    ) -> dict[str, Any]:
        """The record of one of your jobs: state, timings, recipe, results, output, log.

        Args:
            job_id: the job's id (what `merge`, `evaluate` or `push` returned).
            token: your Hub token, the one the job was started with (blank: this session).

        Returns:
            the job record, with `progress` while it runs; an unknown id is an error.
        """
        record = self.owned_job(job_id, self.caller(token, oauth_token, request))
        if record is None:
            raise gr.Error(f"No job with id {job_id!r}.", print_exception=False)
        data = public(record)
        live = self.runner.live(record.id)
        if live is not None and record.state not in FINISHED:
            data["progress"] = {"stage": live.stage, "done": live.done, "total": live.total,
                                "eta": live.eta, "log": "\n".join(live.lines)}  # fmt: skip
        return data

    def list_jobs(
        self,
        limit: float | None = 50,
        token: str | None = None,
        oauth_token: gr.OAuthToken | None = None,
        request: gr.Request | None = None,
    ) -> list[list[Any]]:
        """List your latest jobs, newest first.

        Args:
            limit: how many jobs to list (at most 500).
            token: your Hub token (blank: the jobs of this session).

        Returns:
            a table: id, kind, state, created, seconds, output, error.
        """
        owner = self.caller(token, oauth_token, request)
        rows = []
        for record in self.store.list(limit=min(int(limit or 50), 500), owner=owner):
            seconds = record.seconds  # only the columns: no copy of results and logs
            data = {"id": record.id, "kind": record.kind, "state": record.state,
                    "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created)),
                    "seconds": None if seconds is None else round(seconds, 3),
                    "output": record.output, "error": record.error}  # fmt: skip
            rows.append([data[c] if data[c] is not None else "" for c in JOB_COLUMNS])
        return rows

    # ------------------------------------------------------------------ following a job
    def _follow(
        self, job_id: str, progress: gr.Progress, render: Callable[[JobRecord], Any]
    ) -> Iterator[Any]:
        last: tuple[Any, ...] | None = None
        while True:
            record = self.store.get(job_id)
            assert record is not None
            live = self.runner.live(job_id)
            finished = self.runner.is_done(job_id) or record.state in FINISHED
            if finished:
                break
            if live is not None:
                if live.total:
                    progress((live.done, live.total), desc=live.describe(), unit=live.unit)
                else:
                    progress(None, desc=live.describe())
                now = [f"▶ {live.describe()}"] if live.total else []  # progress, while it runs
                record.log = "\n".join([*live.lines, *now])
            key = (record.state, live.stage if live else None, live.done if live else 0,
                   len(live.lines) if live else 0)  # fmt: skip
            if key != last:
                last = key
                yield render(record)
            time.sleep(POLL_SECONDS)
        record = self.store.get(job_id)
        assert record is not None
        if record.state == "failed":
            raise gr.Error(f"{record.error} (job {record.id})", print_exception=False)
        yield render(record)


__all__ = ["Handlers", "RecipeError", "as_gr_error", "user_errors"]
