"""The Ray backend against a real local cluster (``ray start --head`` on 127.0.0.1): the same
search through ``hubmerge search --ray-address``, one resident evaluator per worker."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from app.search.ray_backend import LOCAL_ENV
from tests.app.conftest import free_port

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray head on 127.0.0.1 (no usage stats), started and stopped by this test."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # socket paths must stay short
    log = Path(temp) / "head.log"
    # Token auth off explicitly: `ray start` turns it on whenever ~/.ray/auth_token exists
    # (a local `ray.init()` writes one), while a driver given an address never does.
    env = {**os.environ, **LOCAL_ENV, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    ray_cli = Path(sys.executable).with_name("ray")
    process = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={temp}", "--block"],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"ray start failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", process
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the session this fixture started, by its id
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(temp, ignore_errors=True)


def _listening(pgid: int) -> list[str]:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) != pgid:
                continue
            found += [c.laddr.ip for c in proc.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN]  # fmt: skip
        except (psutil.Error, ProcessLookupError):
            continue
    return found


def test_search_on_a_local_ray_cluster(ray_cluster, demo_models, tmp_path, capsys):
    from app.cli import main
    from merging import load_recipe, parse_recipe

    address, process = ray_cluster
    addresses = _listening(process.pid)
    assert addresses  # the head's services listen …
    assert set(addresses) <= LOOPBACK  # … on the loopback interface only
    models = {name: str(path) for name, path in demo_models.models.items()}
    recipe = tmp_path / "ta.yaml"
    recipe.write_text(parse_recipe({
        "merge_method": "task_arithmetic", "base_model": models["tiny-base"],
        "models": [{"model": models["tiny-math"]}, {"model": models["tiny-animals"]}],
    }).to_yaml())  # fmt: skip
    code = main(["search", str(recipe), "--examples", str(demo_models.examples),
                 "--budget", "10", "--seed", "0", "--ray-address", address, "--workers", "2",
                 "-o", str(tmp_path / "out")])  # fmt: skip
    assert code == 0
    assert "on ray" in capsys.readouterr().out
    record = json.loads((tmp_path / "out" / "search.json").read_text())
    assert record["backend"] == "ray"
    assert record["workers"] == 2
    assert len(record["candidates"]) == 10  # exact budget with two workers in flight
    assert {c["worker"] for c in record["candidates"] if not c["cached"]} == {0, 1}
    best = load_recipe(tmp_path / "out" / "hubmerge_recipe.yaml")
    assert best.to_yaml() == record["best"]["recipe"]
    assert record["reproduced"] == pytest.approx(record["best"]["score"], rel=1e-3)
    assert not ray.is_initialized()  # the backend disconnected after the search
