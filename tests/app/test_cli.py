"""``hubmerge serve`` / ``hub serve`` / ``push`` commands."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from app.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def test_commands_are_registered():
    parser = build_parser()
    args = parser.parse_args(["serve", "--demo", "--port", "7999", "--data-dir", "/tmp/x"])
    assert (args.demo, args.port, str(args.data_dir)) == (True, 7999, "/tmp/x")
    args = parser.parse_args(["hub", "serve", "--port", "1", "--data", "d"])
    assert args.hub_command == "serve"
    args = parser.parse_args(["push", "out", "--repo-id", "me/x", "--private", "--exist-ok"])
    assert (args.repo_id, args.private, args.exist_ok) == ("me/x", True, True)


def test_serve_options_override_settings(monkeypatch, tmp_path):
    from app.commands.serve import settings_from_args

    monkeypatch.setenv("HUBMERGE_PORT", "8100")
    monkeypatch.setenv("HUBMERGE_DATA_DIR", str(tmp_path))
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0"])
    settings = settings_from_args(args)
    assert (settings.host, settings.port, settings.data_dir) == ("0.0.0.0", 8100, tmp_path)
    assert not settings.demo


def test_push_without_token_is_a_plain_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert main(["push", str(tmp_path), "--repo-id", "me/x"]) == 1
    assert "token" in capsys.readouterr().err


@pytest.mark.slow
def test_hub_serve_and_push_to_it(tmp_path, demo_models):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("# token user\nhf_cli_test alice\n")
    port = __import__("tests.app.conftest", fromlist=["free_port"]).free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
           "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path / "hf")}  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "hub", "serve", "--port", str(port),
         "--data", str(tmp_path / "hub"), "--token-file", str(tokens)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/models", timeout=2)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                assert time.monotonic() < deadline, "hub serve did not start"
                time.sleep(0.3)
        (tmp_path / "token").write_text("hf_cli_test\n")
        pushed = subprocess.run(
            [sys.executable, "-m", "app.cli", "push", str(demo_models.models["tiny-math"]),
             "--repo-id", "alice/pushed", "--private", "--token-file", str(tmp_path / "token")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr[-2000:]
        assert "/alice/pushed/commit/" in pushed.stdout
        again = subprocess.run(
            [sys.executable, "-m", "app.cli", "push", str(demo_models.models["tiny-math"]),
             "--repo-id", "alice/pushed", "--token-file", str(tmp_path / "token")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert again.returncode == 1
        assert "exist" in again.stderr
    finally:
        server.terminate()
        server.wait(timeout=20)
