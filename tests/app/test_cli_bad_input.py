"""``hubmerge check`` on recipes that are not recipes: one line of error, exit 1, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not UTF-8 text"),
     (b"merge_method: linear\nmodels:\n  - model: a/b\n    parameters: {weight: []}\n",
      "an empty list is not a value"),
     (b"merge_method: [unclosed\n", "not valid YAML")],
)  # fmt: skip
def test_check_refuses_in_one_line(tmp_path: Path, capsys, content: bytes, message: str):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(content)
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert message in err
    assert "Traceback" not in err
