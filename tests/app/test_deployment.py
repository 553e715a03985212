"""The Space configuration the README carries agrees with the Dockerfile and the app."""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import metadata_load

ROOT = Path(__file__).resolve().parents[2]


def test_readme_front_matter_configures_a_docker_space_with_sign_in():
    meta = metadata_load(ROOT / "README.md")
    assert meta["sdk"] == "docker"
    assert meta["hf_oauth"] is True
    assert {"write-repos", "manage-repos"} <= set(meta["hf_oauth_scopes"])
    assert len(meta["short_description"]) <= 60  # the Hub's limit
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"EXPOSE {meta['app_port']}" in dockerfile
    assert f"HUBMERGE_PORT={meta['app_port']}" in dockerfile
    assert re.search(r"^USER user$", dockerfile, re.M)  # never root


def test_readme_opens_with_the_two_commands_after_its_front_matter():
    text = (ROOT / "README.md").read_text()
    body = text.split("\n---\n", 1)[1].lstrip()
    lines = body.splitlines()
    assert lines[0] == "# hubmerge"
    block = body.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split()[0] for line in block] == ["scripts/setup", "scripts/test"]
