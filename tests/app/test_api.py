"""The app's API through gradio_client, against the demo app on 127.0.0.1 (local Hub)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("gradio_client")

pytestmark = pytest.mark.slow

from tests.helpers.demo_app import RECIPE, TOKEN  # noqa: E402


def run_merge(client, recipe: str = RECIPE, token: str = TOKEN):
    job = client.submit(recipe, token, "", "loss", api_name="/merge")
    progress = []
    while not job.done():
        status = job.status()
        if status.progress_data:
            progress.extend(status.progress_data)
        threading.Event().wait(0.05)
    job_id, _log, record = job.result()
    return job_id, record, progress


def test_search_and_check(client):
    hits = client.predict("tiny", api_name="/search_models")
    assert {"demo/tiny-base", "demo/tiny-math", "demo/tiny-lora-math"} <= {h["id"] for h in hits}
    report = client.predict(RECIPE, TOKEN, api_name="/check")
    assert "mergeable" in report
    assert "NOT" not in report


def test_merge_evaluate_push_and_download(client, running_app, tmp_path):
    job_id, record, progress = run_merge(client)
    assert record["state"] == "succeeded"
    assert Path(record["output"]).is_dir()
    assert any(p.unit == "tensors" and p.length == 21 for p in progress), progress

    status = client.predict(job_id, TOKEN, api_name="/job_status")
    assert status["recipe"].startswith("merge_method: task_arithmetic")
    assert "hf_" not in json.dumps(status)  # tokens never reach job records

    eval_id, table, plot, eval_record = client.predict(
        job_id, "demo", "", 5, True, TOKEN, api_name="/evaluate"
    )
    assert eval_record["state"] == "succeeded", eval_record
    assert "| hubmerge_demo_math | exact_match |" in table
    assert "merge" in table.splitlines()[0]
    assert "base" in table.splitlines()[0]
    assert "tiny-math" in table.splitlines()[0]
    assert plot
    assert Path(plot).suffix == ".png"
    assert Path(eval_record["result"]["chart"]).name == "scores.png"  # saved with the results
    assert [p["alpha"] for p in eval_record["result"]["probe"]][::6] == [0.0, 1.0]

    card = client.predict(job_id, TOKEN, api_name="/card_preview")
    assert "model-index" in card
    assert "hubmerge_demo" in card

    push_id, commit_url, push_record = client.predict(
        job_id, "demo/api-merge", False, False, TOKEN, api_name="/push"
    )
    assert push_record["state"] == "succeeded"
    assert "/demo/api-merge/commit/" in commit_url
    rows = client.predict(20, TOKEN, api_name="/list_jobs")["data"]
    assert {job_id, eval_id, push_id} <= {row[0] for row in rows}

    # download the pushed repo with the real client and compare it to the merge output
    script = (
        "import sys, torch\n"
        "from huggingface_hub import snapshot_download\n"
        "from transformers import AutoModelForCausalLM\n"
        "from safetensors.torch import load_file\n"
        "path = snapshot_download('demo/api-merge', endpoint=sys.argv[1], token=sys.argv[2])\n"
        "model = AutoModelForCausalLM.from_pretrained(path)\n"
        "print(open(path + '/README.md').read().count('hubmerge_demo'))\n"
        "assert 'model_id = \"demo/api-merge\"' in open(path + '/README.md').read()\n"
        "ours = AutoModelForCausalLM.from_pretrained(sys.argv[3])\n"
        "assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),"
        " ours.state_dict().values()))\n"
        "print('same weights')\n"
    )
    env = {"HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", script, running_app.hub_url, TOKEN, record["output"]],
        capture_output=True, text=True, timeout=180, env={**__import__("os").environ, **env},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "same weights" in out.stdout
    assert int(out.stdout.split()[0]) >= 1


def test_bad_recipe_is_a_plain_error(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="unknown merge method 'task_arithmatic'"):
        client.predict(RECIPE.replace("task_arithmetic", "task_arithmatic"), TOKEN, "", "loss",
                       api_name="/merge")  # fmt: skip
    with pytest.raises(AppError, match="weight"):
        client.predict(RECIPE.replace("weight: 0.5", "weight: lots"), TOKEN, api_name="/check")
    # a parameter the method does not read loads (as in mergekit), with a warning naming it
    report = client.predict(RECIPE.replace("weight: 0.5", "density: 7"), TOKEN, api_name="/check")
    assert "density" in report
    assert "warning" in report.lower()


def test_push_needs_a_token(client):
    job_id, _record, _ = run_merge(client)
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="token"):
        client.predict(job_id, "demo/no-token", False, False, "", api_name="/push")


def test_two_concurrent_jobs_have_separate_outputs(client):
    results = {}

    def go(name: str, recipe: str) -> None:
        results[name] = run_merge(client, recipe)

    other = RECIPE.replace("weight: 0.5", "weight: 0.25")
    threads = [threading.Thread(target=go, args=(n, r)) for n, r in [("a", RECIPE), ("b", other)]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    (id_a, rec_a, _), (id_b, rec_b, _) = results["a"], results["b"]
    assert rec_a["state"] == rec_b["state"] == "succeeded"
    assert id_a != id_b
    assert rec_a["output"] != rec_b["output"]
    assert Path(rec_a["output"]).is_dir()
    assert Path(rec_b["output"]).is_dir()


def test_cancel_leaves_nothing(client, running_app):
    job = client.submit(RECIPE, TOKEN, "", "loss", api_name="/merge")
    job_id = None
    while job_id is None:
        outputs = job.outputs()
        job_id = outputs[0][0] if outputs else None
        threading.Event().wait(0.05)
    assert "cancel" in client.predict(job_id, TOKEN, api_name="/cancel")
    record = client.predict(job_id, TOKEN, api_name="/job_status")
    while record["state"] in ("queued", "running"):
        threading.Event().wait(0.1)
        record = client.predict(job_id, TOKEN, api_name="/job_status")
    assert record["state"] == "cancelled"
    assert record["output"] is None
    assert not (running_app.data_dir / "jobs" / job_id).exists()


def test_merge_mixes_a_full_fine_tune_and_a_hub_lora_adapter(client):
    """A LoRA adapter on the (local) Hub joins a TIES merge as a task vector, via the API."""
    recipe = """\
merge_method: ties
base_model: demo/tiny-base
models:
  - model: demo/tiny-math
    parameters: {weight: 1.0, density: 0.5}
  - model: demo/tiny-base+demo/tiny-lora-math
    parameters: {weight: 1.0, density: 0.5}
"""
    _, record, _ = run_merge(client, recipe)
    assert record["state"] == "succeeded", record.get("error")
    card = (Path(record["output"]) / "README.md").read_text()
    assert "| adapter | `demo/tiny-lora-math` |" in card  # pinned like every other source
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(record["output"])
    assert model.config.num_hidden_layers >= 1
