"""Tokenizers with more tokens than the model has embedding rows (ids ≥ ``vocab_size``), as
mergekit 0.1.5 treats them (``mergekit/tokenizer/build.py``): the base's tokenizer is stripped
of them (``get_stripped_tokenizer``) and the union leaves them out, each with a warning."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from merging import MergeOptions, load_recipe, merge
from merging.check import check_recipe
from merging.errors import VocabMismatchError
from tests.helpers.tiny import CORPUS, build_llama, state_dict, train_tokenizer

pytest.importorskip("transformers")

CPU = MergeOptions(device="cpu", threads=1)
OTHER = [f"the {a} and the {b} swim near {c}." for a in ("zebra", "otter", "heron")
         for b in ("lynx", "panda", "walrus") for c in ("rivers", "lakes", "reefs")]  # fmt: skip


def model(path: Path, *, seed: int, corpus: list[str], size: int, extra: list[str],
          beyond: int) -> Path:  # fmt: skip
    """A tiny Llama whose tokenizer has ``beyond`` more tokens than its embedding rows (the
    last ids: the ``extra`` added tokens, then the last BPE merges)."""
    from transformers import AutoTokenizer

    train_tokenizer(path / "tok", vocab_size=size, corpus=corpus)
    tokenizer = AutoTokenizer.from_pretrained(path / "tok")
    tokenizer.add_tokens(extra)
    build_llama(path, seed=seed, vocab=len(tokenizer) - beyond, tokenizer=False, layers=2,
                hidden=16)  # fmt: skip
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("beyond")
    return {  # a: its 2 added tokens and its 2 last merges have no rows; b: its 2 added ones
        "a": model(root / "a", seed=1, corpus=CORPUS, size=300, extra=["<pa>", "<xa>"], beyond=4),
        "b": model(root / "b", seed=2, corpus=OTHER, size=330, extra=["<tool>", "<xb>"], beyond=2),
    }


def ids(path: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    return dict(AutoTokenizer.from_pretrained(path).get_vocab())


def recipe(pair: dict[str, Path], **top: Any) -> Any:
    data = {"merge_method": "linear", "base_model": str(pair["a"]), "dtype": "float32",
            "models": [{"model": str(pair["a"])}, {"model": str(pair["b"])}], **top}  # fmt: skip
    return load_recipe(yaml.safe_dump(data))


def rows_of(path: Path) -> int:
    return int(json.loads((path / "config.json").read_text())["vocab_size"])


def test_base_source_strips_the_base_tokens_without_rows(pair, tmp_path, caplog):
    from transformers import AutoTokenizer

    size = rows_of(pair["a"])
    original = ids(pair["a"])
    kept = {t: i for t, i in original.items() if i < size}
    with caplog.at_level(logging.WARNING, logger="merging.tokenizer"):
        result = merge(recipe(pair, tokenizer_source="base"), tmp_path / "out", options=CPU)
    out = result.output
    assert any("vocab_size" in w for w in result.report.warnings)  # the report, so the card
    assert "vocab_size" in (out / "README.md").read_text()
    assert ids(out) == kept
    assert len(original) == size + 4
    assert state_dict(out)["model.embed_tokens.weight"].shape[0] == rows_of(out) == size
    assert "4 token(s) at ids ≥ its vocab_size" in caplog.text
    assert "'<pa>'" in caplog.text
    tokenizer = AutoTokenizer.from_pretrained(out)  # the merges that made them are gone too
    encoded = tokenizer("the quick brown fox jumps over the lazy dog <pa> <xa>").input_ids
    assert encoded
    assert max(encoded) < size


def test_union_leaves_out_the_tokens_a_source_has_no_rows_for(pair, tmp_path, caplog):
    va, vb = ids(pair["a"]), ids(pair["b"])
    size_a, size_b = rows_of(pair["a"]), rows_of(pair["b"])
    with caplog.at_level(logging.WARNING, logger="merging.tokenizer"):
        out = merge(recipe(pair, tokenizer_source="union"), tmp_path / "out", options=CPU).output
    merged = ids(out)
    with_rows = {t for t, i in va.items() if i < size_a} | {t for t, i in vb.items() if i < size_b}
    assert set(merged) == with_rows
    assert {"<tool>", "<xb>", "<pa>", "<xa>"}.isdisjoint(merged)
    assert "left out of the union ('<tool>', '<xb>')" in caplog.text
    embed = state_dict(out)["model.embed_tokens.weight"]
    assert embed.shape[0] == rows_of(out) == len(merged)
    b = state_dict(pair["b"])["model.embed_tokens.weight"]
    only_b = [t for t in merged if t not in va]
    assert only_b
    for token in only_b:  # rows mapped by token from the one model that has it
        torch.testing.assert_close(embed[merged[token]], b[vb[token]])
    # the tokens the base lacks are added in b's id order (get_vocab's order varies per run)
    added = sorted(only_b, key=merged.__getitem__)
    assert added == sorted(only_b, key=vb.__getitem__)


def test_check_reports_the_stripped_tokens_before_any_weight_is_read(pair):
    report = check_recipe(recipe(pair, tokenizer_source="union"))
    assert report.ok
    assert any("stripped from the output tokenizer" in w for w in report.warnings)
    assert any("left out of the union" in w for w in report.warnings)


def test_a_non_bpe_tokenizer_with_tokens_beyond_its_rows_is_refused():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from merging.tokenizer import _strip

    words = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2, "c": 3}, unk_token="<unk>"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>")
    with pytest.raises(VocabMismatchError, match="WordLevel tokenizer; only BPE"):
        _strip(tokenizer, 3, "tokenizer of m", [])
    warnings: list[str] = []
    assert _strip(tokenizer, 4, "tokenizer of m", warnings) is tokenizer
    assert not warnings
