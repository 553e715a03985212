"""A merge that would not fit on the disk is refused before it writes anything."""

from __future__ import annotations

import pytest

from app import workflows
from app.handlers import user_errors
from app.jobs import JobRunner, JobStore
from app.settings import Settings
from tests import hub_fixtures

tiny_llama_dir = hub_fixtures.tiny_llama_dir


@pytest.mark.parametrize("reserve", [0, 10**18])
def test_merge_checks_free_space_first(tmp_path, tiny_llama_dir, reserve):
    settings = Settings(data_dir=tmp_path / "data", disk_reserve_bytes=reserve)
    store = JobStore(settings.jobs_db, jobs_dir=settings.jobs_dir)
    runner = JobRunner(store, user_errors=user_errors())
    recipe = f"merge_method: linear\nmodels:\n  - model: {tiny_llama_dir}\n"
    recipe += f"  - model: {tiny_llama_dir}\n"
    job_id = workflows.submit_merge(runner, settings, recipe, token=None, owner="user:alice")
    record = runner.wait(job_id, timeout=120)
    runner.shutdown()
    if not reserve:
        assert record.state == "succeeded", record.error
        assert "MB output" in record.log
        return
    assert record.state == "failed"
    assert record.user_error
    assert "Not enough disk space for this merge" in record.error
    assert "GB output + 0.000 GB downloads" in record.error  # local sources: nothing to fetch
    assert record.output is None
    assert not store.job_dir(job_id).exists()
