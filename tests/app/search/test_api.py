"""The ``search`` endpoint through gradio_client against the launched demo app (local Hub)."""

from __future__ import annotations

import threading

import pytest
import yaml

pytest.importorskip("gradio_client")

pytestmark = pytest.mark.slow

TOKEN = "hf_demo_local_token"
RECIPE = """\
merge_method: task_arithmetic
base_model: demo/tiny-base
models:
  - model: demo/tiny-math
  - model: demo/tiny-animals
"""


def test_search_endpoint_streams_and_its_job_is_a_merge(client):
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/search"]
    names = [p["parameter_name"] for p in info["parameters"]]
    assert names[:8] == ["recipe", "examples", "upload", "budget", "seed", "metric", "backend",
                         "token"]  # the old inputs keep their places  # fmt: skip
    assert names[8:] == ["tasks", "limit", "guard", "guard_limit", "optimizer", "from_tasks"]
    assert all(p["parameter_has_default"] for p in info["parameters"][8:])  # optional
    job = client.submit(RECIPE, "", None, 8, 0, "loss", "in process", TOKEN, api_name="/search")
    while not job.done():
        threading.Event().wait(0.05)
    job_id, log, _chart, best, record = job.result()
    assert record["state"] == "succeeded", record.get("error")
    assert "candidate 8/8" in log
    search = record["result"]["search"]
    assert len(search["candidates"]) == 8
    winner = yaml.safe_load(best)  # the Method tab's YAML (the code box drops a final newline)
    assert winner == yaml.safe_load(search["best"]["recipe"])
    assert {m["model"].split("@")[0] for m in winner["models"]} <= {
        "demo/tiny-base", "demo/tiny-math", "demo/tiny-animals"}  # pinned to commits  # fmt: skip
    status = client.predict(job_id, TOKEN, api_name="/job_status")
    assert yaml.safe_load(status["recipe"]) == winner  # Evaluate and Push read the winner
    assert "hf_" not in str(status)  # the token never reaches the record
    _eval_id, table, _plot, eval_record = client.predict(
        job_id, "demo", "", 5, False, TOKEN, api_name="/evaluate")  # fmt: skip
    assert eval_record["state"] == "succeeded"
    assert "merge" in table


def test_search_endpoint_takes_the_examples_from_harness_tasks(client):
    """``from_tasks``: no examples file; the selection examples are the documents of the
    named tasks (``limit`` items each), and the job record says where they came from."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="name the harness tasks"):
        client.predict(RECIPE, "", None, 4, 0, "loss", "in process", TOKEN, "", 0, "", 0,
                       "auto", True, api_name="/search")  # fmt: skip
    job = client.submit(RECIPE, "", None, 4, 0, "loss", "in process", TOKEN, "hubmerge_demo_math",
                        6, "", 0, "auto", True, api_name="/search")  # fmt: skip
    while not job.done():
        threading.Event().wait(0.05)
    *_, record = job.result()
    assert record["state"] == "succeeded", record.get("error")
    search = record["result"]["search"]
    assert search["examples"] == 6
    assert search["examples_from"] == {"tasks": ["hubmerge_demo_math"], "limit": 6,
                                       "num_fewshot": None}  # fmt: skip
