"""Fixtures for the app tests: the demo models (built once), and the app launched on
127.0.0.1 in a subprocess with the demo's local Hub (``python -m app --demo``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def app_env(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HUBMERGE_DATA_DIR=str(data_dir),
        HUBMERGE_PORT=str(port),
        HF_HOME=str(data_dir / "hf-home"),
        HF_HUB_OFFLINE="0",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        GRADIO_ANALYTICS_ENABLED="False",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("HF_ENDPOINT", None)
    env.update(extra)
    return env


@dataclass
class RunningApp:
    url: str
    data_dir: Path
    process: subprocess.Popen
    log: Path

    @property
    def hub_url(self) -> str:
        for line in self.log.read_text().splitlines():
            if "demo Hub on " in line:
                return line.split("demo Hub on ")[1].split()[0]
        raise AssertionError("the app log does not name the demo Hub")


def start_app(data_dir: Path, *, timeout: float = 300, **env: str) -> RunningApp:
    port = free_port()
    log = data_dir / f"app-{port}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "--demo"],
        cwd=ROOT,
        env=app_env(data_dir, port, **env),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the app exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/gradio_api/info", timeout=2):
                return RunningApp(url, data_dir, process, log)
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise AssertionError(f"the app did not start in {timeout} s:\n{log.read_text()[-3000:]}")


def stop_app(app: RunningApp) -> None:
    app.process.terminate()
    try:
        app.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        app.process.kill()
        app.process.wait()


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir whose demo zoo is built, once per session (the apps reuse the cache)."""
    from app.demo import build_demo_models

    root = tmp_path_factory.mktemp("hubmerge-data")
    build_demo_models(root / "demo" / "models")
    return root


@pytest.fixture(scope="session")
def demo_models(demo_root: Path):
    from app.demo import build_demo_models

    return build_demo_models(demo_root / "demo" / "models")


@pytest.fixture(scope="session")
def running_app(demo_root: Path) -> Iterator[RunningApp]:
    app = start_app(demo_root, HUBMERGE_TENSOR_DELAY="0.2")  # progress visible in the browser
    try:
        yield app
    finally:
        stop_app(app)


@pytest.fixture(scope="session")
def client(running_app: RunningApp):
    from gradio_client import Client

    return Client(running_app.url, verbose=False)


@pytest.fixture
def artifacts(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A folder for screenshots; copied to test-artifacts/<test name>/ afterwards."""
    out = tmp_path / "artifacts"
    out.mkdir()
    yield out
    import shutil

    target = ARTIFACTS / request.node.name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(out, target)
