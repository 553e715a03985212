"""The app's compatibility report (the live preview) shows the plan and the recipe's warnings."""

from __future__ import annotations

import pytest
import yaml


@pytest.mark.slow  # imports gradio and builds the tiny models
def test_app_compatibility_report_shows_the_warnings(tiny_models, tmp_path):
    from app.handlers import Handlers, user_errors
    from app.jobs import JobRunner, JobStore
    from app.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", local_paths=True)
    store = JobStore(settings.jobs_db, jobs_dir=settings.jobs_dir)
    runner = JobRunner(store, user_errors=user_errors(), max_queued=3)
    try:
        text = yaml.safe_dump({
            "merge_method": "ties", "base_model": str(tiny_models["base"]),
            "models": [{"model": str(tiny_models["ft1"]), "parameters": {"density": 0.5}}],
            "parameters": {"nomalize": True},
        })
        report = Handlers(settings, runner).preview_check(text, None)
    finally:
        runner.shutdown()
    assert "did you mean 'normalize'?" in report
    assert "Plan:" in report
