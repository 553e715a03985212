"""The search as an app job and endpoint: streamed like a merge, the winning recipe becomes
the job's recipe (Evaluate / Push take its output), cancel keeps the best so far."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app import workflows
from app.handlers import Handlers
from app.jobs import JobRunner, JobStore
from app.search.job import LIVE, chart_points, submit_search
from app.settings import Settings
from merging import load_recipe, parse_recipe

pytestmark = pytest.mark.slow


@pytest.fixture
def app_parts(tmp_path: Path, demo_models):
    settings = Settings(data_dir=tmp_path / "data", local_paths=True, device="cpu",
                        probe_examples=demo_models.examples)  # fmt: skip
    store = JobStore(settings.jobs_db, jobs_dir=settings.jobs_dir)
    runner = JobRunner(store, concurrency=1)
    models = {name: str(path) for name, path in demo_models.models.items()}
    recipe = parse_recipe({"merge_method": "task_arithmetic", "base_model": models["tiny-base"],
                           "models": [{"model": models["tiny-math"]},
                                      {"model": models["tiny-animals"]}]})  # fmt: skip
    yield runner, settings, recipe, workflows._examples(settings, None)
    runner.shutdown()


def test_search_job_merges_the_winner_and_becomes_a_merge_job(app_parts):
    runner, settings, recipe, rows = app_parts
    job = submit_search(runner, settings, recipe, rows, budget=8, seed=0, metric="loss",
                        backend="in process", token=None, owner="me")  # fmt: skip
    record = runner.wait(job, timeout=600)
    assert record.state == "succeeded", record.error
    search = record.result["search"]
    assert len(search["candidates"]) == 8
    assert record.recipe == record.result["recipe"] == search["best"]["recipe"]
    _, winner, folder = workflows.merge_record(runner.store, job, owner="me")
    assert winner == load_recipe(record.recipe)
    assert (folder / "search.json").is_file()
    points = chart_points(job, record.result)
    assert len(points) == 16
    best = [p["score"] for p in points if p["series"] == "best so far"]
    assert best == sorted(best, reverse=True)  # loss: the best so far never gets worse


def test_cancel_keeps_the_best_recipe_so_far(app_parts):
    runner, settings, recipe, rows = app_parts
    job = submit_search(runner, settings, recipe, rows, budget=200, seed=0, metric="loss",
                        backend="in process", token=None, owner="me")  # fmt: skip
    deadline = time.monotonic() + 300
    while len(LIVE.get(job, [])) < 6:
        assert time.monotonic() < deadline, "the search did not start"
        time.sleep(0.05)
    assert runner.cancel(job)
    record = runner.wait(job, timeout=120)
    assert record.result["cancelled"] is True
    candidates = record.result["search"]["candidates"]
    assert 6 <= len(candidates) < 200
    assert record.result["recipe"] == min(candidates, key=lambda c: c["score"])["recipe"]
    assert record.output is None  # nothing merged


def test_search_endpoint_streams_and_ends_with_the_winning_recipe(app_parts):
    runner, settings, recipe, _ = app_parts
    from app.ui_search import SearchHandler

    handler = SearchHandler(Handlers(settings, runner))
    updates = list(handler.search(recipe.to_yaml(), "", None, 6, 1, "loss", "in process", ""))
    job_id, log, chart, best, record = updates[-1]
    assert record["state"] == "succeeded"
    assert record["id"] == job_id
    assert "candidate 6/6" in log
    assert len(chart) == 12
    assert load_recipe(best) == load_recipe(record["result"]["recipe"])


def test_build_demo_has_the_search_step(tmp_path):
    from app.ui import build_demo

    settings = Settings(data_dir=tmp_path / "data", local_paths=True)
    demo = build_demo(settings)
    assert any(d.get("api_name") == "search" for d in demo.config["dependencies"])
    demo.runner.shutdown()


def test_search_endpoint_re_scores_and_guards_with_harness_tasks(app_parts):
    runner, settings, recipe, _ = app_parts
    from app.ui_search import SearchHandler

    handler = SearchHandler(Handlers(settings, runner))
    updates = list(handler.search(recipe.to_yaml(), "", None, 6, 1, "loss", "in process", "",
                                  "hubmerge_demo_math", 10, "hubmerge_demo_animals", 16,
                                  "nevergrad"))  # fmt: skip
    _, log, _, _, record = updates[-1]
    assert record["state"] == "succeeded", record.get("error")
    search = record["result"]["search"]
    assert search["sampler"] == "nevergrad NGOpt"
    rescore = search["rescore"]
    assert rescore["tasks"] == {"tasks": ["hubmerge_demo_math"], "limit": 10, "num_fewshot": None}
    assert rescore["guard"]["tasks"] == ["hubmerge_demo_animals"]
    assert search["best"]["index"] == rescore["winner"]
    assert "guard reference (recipe)" in log
