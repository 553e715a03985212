"""``hubmerge jobs``: the operator sees and manages every user's jobs on the data dir."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from app.cli import main
from app.jobs_store import JobStore


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    store = JobStore(tmp_path / "jobs.sqlite", jobs_dir=tmp_path / "jobs")
    for owner, state in [("user:alice", "succeeded"), ("user:bob", "running")]:
        record = store.create("merge", owner=owner, recipe="merge_method: linear\n")
        folder = store.job_dir(record.id) / "merged"
        folder.mkdir(parents=True)
        store.update(record.id, state=state, started=time.time() - 7200,
                     finished=time.time() - 7200 if state == "succeeded" else None,
                     output=str(folder) if state == "succeeded" else None)  # fmt: skip
    store.close()
    return tmp_path


def jobs(data_dir: Path, *args: str) -> int:
    return main(["jobs", "--data-dir", str(data_dir), *args])


def records(data_dir: Path) -> dict[str, dict]:
    store = JobStore(data_dir / "jobs.sqlite", jobs_dir=data_dir / "jobs", recover=False)
    return {r.owner: r.to_dict() for r in store.list()}


def test_list_and_show_every_owner(data_dir, capsys):
    assert jobs(data_dir, "list") == 0
    out = capsys.readouterr().out
    assert "user:alice" in out
    assert "user:bob" in out
    assert out.splitlines()[0].split()[:4] == ["id", "kind", "state", "owner"]
    assert jobs(data_dir, "list", "--owner", "user:bob", "--json") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["state"] for line in lines] == ["running"]
    bob = records(data_dir)["user:bob"]["id"]
    assert jobs(data_dir, "show", bob) == 0
    assert json.loads(capsys.readouterr().out)["owner"] == "user:bob"
    assert jobs(data_dir, "show", "merge-nope") == 1
    assert "no job 'merge-nope'" in capsys.readouterr().err


def test_cancel_asks_the_running_app(data_dir, capsys):
    before = records(data_dir)
    assert jobs(data_dir, "cancel", before["user:bob"]["id"]) == 0
    assert "cancel requested" in capsys.readouterr().out
    after = records(data_dir)
    assert after["user:bob"]["cancel_requested"]
    assert after["user:bob"]["state"] == "running"  # the CLI never marks running jobs failed
    assert jobs(data_dir, "cancel", before["user:alice"]["id"]) == 1  # already finished


def test_prune_removes_old_outputs_then_records(data_dir, capsys):
    alice = records(data_dir)["user:alice"]
    assert jobs(data_dir, "prune", "--hours", "3") == 0
    assert "removed the outputs of 0 job(s)" in capsys.readouterr().out
    assert jobs(data_dir, "prune", "--hours", "1") == 0
    assert "removed the outputs of 1 job(s)" in capsys.readouterr().out
    pruned = records(data_dir)["user:alice"]
    assert pruned["expired"] is not None
    assert pruned["output"] is None
    assert not Path(alice["output"]).exists()
    assert jobs(data_dir, "prune", "--hours", "1", "--delete") == 0
    assert set(records(data_dir)) == {"user:bob"}  # running jobs are never pruned
