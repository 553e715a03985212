"""The Space configuration the README carries agrees with the Dockerfile and the app."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
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


def _dockerfile_args() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text()
    return dict(re.findall(r"^ARG (\w+)=(.*)$", text, re.M))


def test_dockerfile_defaults_are_what_a_space_builds():
    text = (ROOT / "Dockerfile").read_text()
    args = _dockerfile_args()
    assert args["BASE_IMAGE"] == "python:3.11-slim"
    assert args["TORCH"] == "torch"
    assert args["TORCH_INDEX"].endswith("/whl/cpu")  # CPU wheels, not the CUDA build
    assert text.index("ARG BASE_IMAGE=") < text.index("FROM ${BASE_IMAGE}")
    torch_step = text.index('RUN pip install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH"')
    assert torch_step < text.index('RUN pip install ".[app,eval]"')  # torch is there first


def test_container_check_builds_the_same_dockerfile_with_local_sources():
    script = ROOT / "scripts" / "container-check"
    text = script.read_text()
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert not (ROOT / "scripts" / "docker-rehearsal").exists()
    for arg in re.findall(r"--build-arg (\w+)=", text):
        assert arg in _dockerfile_args()
    assert {"BASE_IMAGE", "TORCH", "TORCH_INDEX"} <= set(re.findall(r"--build-arg (\w+)=", text))
    assert 'pod() { podman --runtime /usr/sbin/runc "$@"; }' in text
    assert re.search(r"^pod build \"\$\{limits\[@\]\}\"", text, re.M)
    assert re.search(r"^pod run -d .*\"\$\{limits\[@\]\}\" -e HUBMERGE_DEMO=1 "
                     r"-p \"127\.0\.0\.1:\$port:7860\"", text, re.M)  # fmt: skip
    # no registry or mirror is written down: the mirror comes from apt's configuration
    assert re.findall(r"\w+://[\w.-]+", text) == ["http://127.0.0.1"] * text.count("http://127")
    assert "container-check" not in (ROOT / ".ci" / "run").read_text()  # minutes: not in CI


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"sources.list.d/debian.sources": "Types: deb\nURIs: http://security.test/debian\n"
          "Suites: bookworm-security\nComponents: main\n\nTypes: deb\n"
          "URIs: http://mirror.test/debian\nSuites: bookworm bookworm-updates\n"},
         "http://mirror.test/debian"),
        ({"sources.list": "# deb http://old.test/debian bookworm main\n"
          "deb [signed-by=/k.gpg] http://list.test/debian bookworm main\n"},
         "http://list.test/debian"),
        ({"sources.list.d/other.sources": "Types: deb-src\nURIs: http://src.test/\n"
          "Suites: bookworm\n"}, ""),
    ],
)  # fmt: skip
def test_container_check_reads_the_debian_mirror_from_apt(tmp_path, files, expected):
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    text = (ROOT / "scripts" / "container-check").read_text()
    function = re.search(r"^debian_mirror\(\) \{\n.*?^\}\n", text, re.M | re.S).group(0)
    out = subprocess.run(
        ["bash", "-c", f"suite=bookworm\n{function}debian_mirror | head -n1"],
        env={"APT_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == expected
