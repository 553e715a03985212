"""The documented API (docs/api.md): endpoint names, and the token as the job endpoints' last
input. Built without launching, so a tab that takes one of these names breaks this test."""

from __future__ import annotations

from app.settings import Settings
from app.ui import build_demo

JOB_ENDPOINTS = {
    "/job_status": ["job_id", "token"],
    "/list_jobs": ["limit", "token"],
    "/cancel": ["job_id", "token"],
    "/card_preview": ["merge_job", "token"],
    "/evaluate": ["merge_job", "suite", "tasks", "limit", "plot", "token"],
    "/push": ["merge_job", "repo_id", "private", "exist_ok", "token"],
    "/merge": ["recipe", "token", "soup_examples", "soup_metric"],
}


def test_job_endpoints_take_the_token_last(tmp_path):
    demo = build_demo(Settings(data_dir=tmp_path))
    try:
        named = demo.get_api_info()["named_endpoints"]
    finally:
        demo.runner.shutdown()
    for name, inputs in JOB_ENDPOINTS.items():
        assert name in named, f"{name} is not public (another event took its name?)"
        assert [p["parameter_name"] for p in named[name]["parameters"]] == inputs, name
    assert {"/search_models", "/check", "/greedy_soup"} <= set(named)
