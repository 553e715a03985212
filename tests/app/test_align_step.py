"""The app's Align job (app/align_step.py): aligned copy, both barriers, the pointless note."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.align_step import submit_align
from app.jobs import JobRunner, JobStore
from app.settings import Settings
from app.workflows import InputError
from merging.align.perms import Permutations
from merging.align.spec import model_spec
from tests.merging.align.helpers import build_trained, permute_folder


def _runner(tmp_path: Path) -> tuple[JobRunner, Settings]:
    probe = tmp_path / "probe.jsonl"
    rows = [{"input": f"{i} plus 1 is", "output": f" {i + 1}."} for i in range(6)]
    probe.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = Settings(data_dir=tmp_path / "data", local_paths=True, device="cpu",
                        probe_examples=probe)  # fmt: skip
    store = JobStore(settings.jobs_db, jobs_dir=settings.jobs_dir)
    return JobRunner(store, concurrency=1), settings


@pytest.mark.slow
def test_align_job_reports_both_barriers_and_a_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    a = build_trained(tmp_path / "a", seed=0)
    spec = model_spec(json.loads((a / "config.json").read_text()))
    b = permute_folder(
        a, tmp_path / "b", Permutations.random(spec, torch.Generator().manual_seed(2))
    )
    runner, settings = _runner(tmp_path)
    job = submit_align(runner, settings, str(a), str(b), token=None, owner="me")
    record = runner.wait(job, timeout=300)
    assert record.state == "succeeded", record.error
    result = record.result
    assert result["barrier_after"] == pytest.approx(0.0, abs=1e-5)
    assert result["barrier_before"] > 0.01
    assert "| A → aligned B |" in result["table"]
    assert Path(result["plot"]).is_file()
    assert (Path(record.output) / "alignment.json").is_file()
    assert "sweep 1: objective" in record.log


def test_align_job_refuses_local_paths_where_the_app_forbids_them(tmp_path: Path) -> None:
    runner, settings = _runner(tmp_path)
    settings = settings.with_(local_paths=False)
    with pytest.raises(InputError, match="not accepted"):
        submit_align(runner, settings, str(tmp_path), str(tmp_path), token=None)
    with pytest.raises(InputError, match="Give both models"):
        submit_align(runner, settings, "", "org/b", token=None)
