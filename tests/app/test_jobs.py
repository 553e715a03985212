"""Job store and runner: records, failures, cancellation, restart survival."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app.jobs import INTERRUPTED, JobRunner, JobStore
from merging.errors import RecipeError


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite", jobs_dir=tmp_path / "jobs")


def test_success_records_result_and_timings(store):
    runner = JobRunner(store, concurrency=1)

    def work(ctx):
        (ctx.output_dir / "file.txt").write_text("x")
        ctx.progress("merge", 1, 2, "tensors")
        ctx.log("half way")
        return {"output": str(ctx.output_dir), "answer": 42}

    job_id = runner.submit("merge", work, recipe="merge_method: linear\n")
    record = runner.wait(job_id, timeout=10)
    assert record.state == "succeeded"
    assert record.result == {"answer": 42}
    assert Path(record.output, "file.txt").is_file()
    assert record.seconds is not None
    assert record.seconds >= 0
    assert "half way" in record.log
    assert record.recipe == "merge_method: linear\n"
    runner.shutdown()


def test_user_error_keeps_message_internal_error_is_generic(store, caplog):
    runner = JobRunner(store, user_errors=(RecipeError,))

    def bad_recipe(ctx):
        (ctx.output_dir / "partial").write_text("x")
        raise RecipeError("models[0]: weight must be a number")

    def crash(ctx):
        raise ZeroDivisionError("secret internals")

    user = runner.wait(runner.submit("merge", bad_recipe), timeout=10)
    internal = runner.wait(runner.submit("merge", crash), timeout=10)
    assert user.state == "failed"
    assert user.user_error
    assert user.error == "models[0]: weight must be a number"
    assert not store.job_dir(user.id).exists()  # partial output removed
    assert internal.state == "failed"
    assert not internal.user_error
    assert internal.id in internal.error
    assert "secret" not in internal.error
    assert "secret internals" in caplog.text  # logged with its traceback
    runner.shutdown()


def test_cancel_stops_a_running_job_and_removes_output(store):
    runner = JobRunner(store)
    started = threading.Event()

    def slow(ctx):
        (ctx.output_dir / "partial").write_text("x")
        started.set()
        while True:
            ctx.check_cancelled()
            time.sleep(0.01)

    job_id = runner.submit("merge", slow)
    assert started.wait(10)
    assert runner.cancel(job_id)
    record = runner.wait(job_id, timeout=10)
    assert record.state == "cancelled"
    assert not store.job_dir(job_id).exists()
    assert not runner.cancel(job_id)
    runner.shutdown()


def test_concurrency_limit_queues_the_rest(store):
    runner = JobRunner(store, concurrency=1)
    gate = threading.Event()
    first = runner.submit("merge", lambda ctx: gate.wait(10) and {})
    second = runner.submit("merge", lambda ctx: {})
    time.sleep(0.2)
    assert store.get(first).state == "running"
    assert store.get(second).state == "queued"
    gate.set()
    assert runner.wait(second, timeout=10).state == "succeeded"
    runner.shutdown()


def test_history_survives_restart_and_running_jobs_become_failed(tmp_path):
    store = JobStore(tmp_path / "db.sqlite", jobs_dir=tmp_path / "jobs")
    done = store.create("merge", recipe="r")
    store.update(done.id, state="succeeded", finished=time.time())
    running = store.create("merge", recipe="r")
    store.update(running.id, state="running", started=time.time())
    partial = store.job_dir(running.id) / "merged.tmp"
    partial.mkdir(parents=True)
    (partial / "model-00001.safetensors").write_bytes(b"half")
    store.close()

    reopened = JobStore(tmp_path / "db.sqlite", jobs_dir=tmp_path / "jobs")
    assert {r.id for r in reopened.list()} == {done.id, running.id}
    assert reopened.get(done.id).state == "succeeded"
    failed = reopened.get(running.id)
    assert failed.state == "failed"
    assert failed.error == INTERRUPTED
    assert not store.job_dir(running.id).exists()


KILL_SCRIPT = """
import sys, time
from pathlib import Path
from app.jobs import JobRunner, JobStore
from app.settings import Settings
from app import workflows
data = Path(sys.argv[1])
settings = Settings(data_dir=data, tensor_delay=0.3)
store = JobStore(settings.jobs_db, jobs_dir=settings.jobs_dir)
runner = JobRunner(store)
recipe = "merge_method: linear\\nmodels:\\n" + "".join(
    "  - model: %s\\n" % name for name in sys.argv[2:])
job_id = workflows.submit_merge(runner, settings, recipe, token=None)
while (runner.live(job_id).done or 0) < 3:
    time.sleep(0.05)
print(job_id, flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_job_killed_mid_merge_is_failed_with_no_output(tmp_path, demo_models):
    models = demo_models.models
    process = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(tmp_path),
         str(models["tiny-math"]), str(models["tiny-animals"])],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    job_id = process.stdout.readline().strip()
    assert job_id.startswith("merge-")
    job_dir = tmp_path / "jobs" / job_id
    assert job_dir.exists()  # the merge is half-written
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)

    store = JobStore(tmp_path / "jobs.sqlite", jobs_dir=tmp_path / "jobs")
    record = store.get(job_id)
    assert record.state == "failed"
    assert "stopped" in record.error
    assert record.output is None
    assert not job_dir.exists()
