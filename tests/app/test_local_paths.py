"""Local folders as sources: only on a loopback listen address or when allowed explicitly,
never below the data dir (symlinks and ``..`` resolved first); the disk check's figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import workflows
from app.disk_space import ensure_disk_space
from app.local_paths import is_loopback
from app.settings import Settings, read_settings
from merging.errors import OutputError


def recipe(*models: str | Path) -> str:
    return "merge_method: linear\nmodels:\n" + "".join(f"  - model: {m}\n" for m in models)


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    data = tmp_path / "data"
    inside = data / "jobs" / "merge-1234" / "merged"
    outside = tmp_path / "models" / "mine"
    for folder in (inside, outside, tmp_path / "models" / "other"):
        folder.mkdir(parents=True)
    link = tmp_path / "models" / "link"
    link.symlink_to(inside)
    return {"data": data, "inside": inside, "outside": outside, "link": link,
            "other": tmp_path / "models" / "other"}  # fmt: skip


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("127.0.0.2", True),
     ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("example.org", False)],
)  # fmt: skip
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_local_folders_follow_the_listen_address_unless_set(folders):
    local = recipe(folders["outside"], folders["other"])
    workflows.parse(local, Settings(data_dir=folders["data"], host="127.0.0.1"))
    shared = Settings(data_dir=folders["data"], host="0.0.0.0")
    with pytest.raises(workflows.InputError, match="HUBMERGE_ALLOW_LOCAL_PATHS=1"):
        workflows.parse(local, shared)
    workflows.parse(local, shared.with_(local_paths=True))
    with pytest.raises(workflows.InputError, match="not accepted"):
        workflows.parse(local, Settings(data_dir=folders["data"], local_paths=False))
    assert workflows.parse(recipe("org/a", "org/b"), shared).models[0].model == "org/a"


def test_the_data_dir_is_refused_whatever_the_setting(folders):
    allowed = Settings(data_dir=folders["data"], local_paths=True)
    sneaky = folders["outside"] / ".." / ".." / "data" / "jobs" / "merge-1234" / "merged"
    for path in (folders["inside"], folders["link"], sneaky, folders["data"]):
        with pytest.raises(workflows.InputError, match="inside the app's data dir"):
            workflows.parse(recipe(folders["outside"], path), allowed)
    adapter = f"  - model: {folders['outside']}+{folders['link']}\n"
    with pytest.raises(workflows.InputError, match="data dir"):
        workflows.parse(recipe(folders["outside"]) + adapter, allowed)


def test_settings_from_the_environment(tmp_path):
    base = {"HUBMERGE_DATA_DIR": str(tmp_path)}
    assert read_settings(base).allow_local_paths  # 127.0.0.1 by default
    assert not read_settings({**base, "HUBMERGE_HOST": "0.0.0.0"}).allow_local_paths
    allowed = {**base, "HUBMERGE_HOST": "0.0.0.0", "HUBMERGE_ALLOW_LOCAL_PATHS": "1"}
    assert read_settings(allowed).allow_local_paths
    assert not read_settings({**base, "HUBMERGE_ALLOW_LOCAL_PATHS": "0"}).allow_local_paths
    limits = read_settings({**base, "HUBMERGE_KEEP_HOURS": "2.5", "HUBMERGE_MAX_QUEUED": "7"})
    assert (limits.keep_hours, limits.max_queued) == (2.5, 7)
    assert (read_settings(base).keep_hours, read_settings(base).max_queued) == (24.0, 3)


def test_disk_check_refuses_with_the_figures(tmp_path):
    ensure_disk_space(tmp_path / "out", 1000, 1000, cache=tmp_path)
    with pytest.raises(OutputError, match=r"needs .* GB \(.* GB output \+ .* GB downloads\).*free"):
        ensure_disk_space(tmp_path / "out", 10**18, 0, cache=tmp_path)
    with pytest.raises(OutputError, match=r"keeping 1000000\.000 GB free"):
        ensure_disk_space(tmp_path / "out", 1, 1, reserve_bytes=10**15, cache=tmp_path)
