"""Tokenizer sources on tiny Llamas with different vocabularies (tokenizers trained here):
union / base / a model / the ``tokenizer:`` block, rows mapped by token, chat templates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from merging import MergeOptions, load_recipe, merge
from merging.chat_templates import CHATML
from merging.check import check_recipe
from tests.helpers.tiny import CORPUS, build_llama, state_dict, train_tokenizer

pytest.importorskip("transformers")

ANIMALS = [f"the {a} and the {b} swim near {c}." for a in ("zebra", "otter", "heron", "koala")
           for b in ("lynx", "panda", "walrus") for c in ("rivers", "lakes", "reefs")]  # fmt: skip
CPU = MergeOptions(device="cpu", threads=1)


def model_with_tokenizer(path: Path, *, seed: int, corpus: list[str], size: int) -> Path:
    from transformers import AutoTokenizer

    train_tokenizer(path / "tok", vocab_size=size, corpus=corpus)
    tokenizer = AutoTokenizer.from_pretrained(path / "tok")
    build_llama(path, seed=seed, vocab=len(tokenizer), tokenizer=False, layers=2, hidden=16)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vocab")
    return {
        "a": model_with_tokenizer(root / "a", seed=1, corpus=CORPUS, size=300),
        "b": model_with_tokenizer(root / "b", seed=2, corpus=ANIMALS + CORPUS[:40], size=330),
    }


def vocab(path: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path).get_vocab()


def run(pair: dict[str, Path], out: Path, **top: Any) -> Path:
    models = [{"model": str(pair["a"])}, {"model": str(pair["b"])}]
    data = {"merge_method": "linear", "models": models, "base_model": str(pair["a"]),
            "dtype": "float32", **top}  # fmt: skip
    return merge(load_recipe(yaml.safe_dump(data)), out, options=CPU).output


def rows(path: Path) -> dict[str, torch.Tensor]:
    state = state_dict(path)
    return {"embed": state["model.embed_tokens.weight"], "head": state["lm_head.weight"]}


def test_union_vocabulary_maps_rows_by_token(pair, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = run(pair, tmp_path / "out", tokenizer_source="union")
    tokenizer = AutoTokenizer.from_pretrained(out)
    out_vocab, va, vb = tokenizer.get_vocab(), vocab(pair["a"]), vocab(pair["b"])
    assert set(out_vocab) == set(va) | set(vb)
    assert set(vb) - set(va), "the test needs tokens only one model has"
    merged, a, b = rows(out), rows(pair["a"]), rows(pair["b"])
    config = json.loads((out / "config.json").read_text())
    assert merged["embed"].shape[0] == config["vocab_size"] == len(tokenizer)
    for token, index in out_vocab.items():
        for kind in ("embed", "head"):
            if token in va and token in vb:  # both have it: the average of their own rows
                expected = (a[kind][va[token]] + b[kind][vb[token]]) / 2
            elif token in va:  # one has it: that row (the other model is filled with it)
                expected = a[kind][va[token]]
            else:
                expected = b[kind][vb[token]]
            torch.testing.assert_close(merged[kind][index], expected, msg=f"{token} {kind}")
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tokenizer("the zebra and the walrus", return_tensors="pt").input_ids
    assert int(ids.max()) >= len(va)  # uses a token only the second model had
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_base_source_keeps_the_base_vocabulary_and_maps_the_others_rows(pair, tmp_path):
    out = run(pair, tmp_path / "out", tokenizer_source="base")
    va, vb = vocab(pair["a"]), vocab(pair["b"])
    assert vocab(out) == va
    merged, a, b = rows(out), rows(pair["a"]), rows(pair["b"])
    shared = next(t for t in va if t in vb and va[t] != vb[t])  # same token, other index
    torch.testing.assert_close(merged["embed"][va[shared]], (a["embed"][va[shared]] +
                               b["embed"][vb[shared]]) / 2)  # fmt: skip
    only_a = next(t for t in va if t not in vb)
    torch.testing.assert_close(merged["embed"][va[only_a]], a["embed"][va[only_a]])


def test_a_model_as_source_gives_its_vocabulary(pair, tmp_path):
    out = run(pair, tmp_path / "out", tokenizer_source=str(pair["b"]))
    assert vocab(out) == vocab(pair["b"])
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(vocab(pair["b"]))


def test_tokenizer_block_tokens_force_zero_and_padding(pair, tmp_path):
    block = {"source": "union", "pad_to_multiple_of": 64,
             "tokens": {"<s>": {"source": str(pair["b"]), "force": True},
                        "<|new|>": {"source": {"kind": "zero"}},
                        "plus": {"source": {"kind": "model_token", "model": str(pair["b"]),
                                            "token": "</s>"}, "force": True}}}  # fmt: skip
    out = run(pair, tmp_path / "out", tokenizer=block)
    out_vocab, vb = vocab(out), vocab(pair["b"])
    merged, b = rows(out), rows(pair["b"])
    count = len(out_vocab)
    assert merged["embed"].shape[0] == -(-count // 64) * 64 > count
    assert json.loads((out / "config.json").read_text())["vocab_size"] == merged["embed"].shape[0]
    torch.testing.assert_close(merged["embed"][out_vocab["<s>"]], b["embed"][vb["<s>"]])
    torch.testing.assert_close(merged["embed"][out_vocab["plus"]], b["embed"][vb["</s>"]])
    assert not merged["embed"][out_vocab["<|new|>"]].any()
    padding = merged["embed"][count:]
    torch.testing.assert_close(padding, merged["embed"][:count].mean(0).expand_as(padding))


JINJA = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


@pytest.mark.parametrize("template", ["chatml", JINJA, "auto"])
def test_chat_template_is_written_into_the_tokenizer_files(pair, tmp_path, template):
    from transformers import AutoTokenizer

    if template == "auto":
        source = AutoTokenizer.from_pretrained(pair["b"])
        source.chat_template = CHATML
        source.save_pretrained(pair["b"])
    out = run(pair, tmp_path / "out", chat_template=template, tokenizer_source="union")
    tokenizer = AutoTokenizer.from_pretrained(out)
    expected = CHATML if template in ("chatml", "auto") else template
    assert tokenizer.chat_template == expected
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "hi" in text


def test_check_reports_the_vocabulary_rows_before_any_weight_is_read(pair):
    models = [{"model": str(pair["a"])}, {"model": str(pair["b"])}]
    data = {"merge_method": "linear", "models": models, "tokenizer_source": "union"}
    report = check_recipe(load_recipe(yaml.safe_dump(data)))
    assert report.ok
    size = len(set(vocab(pair["a"])) | set(vocab(pair["b"])))
    assert f"embedding rows mapped by token: {size} rows" in report.render()
    shapes = {h.name: h.shape for h in report.output}
    assert shapes["model.embed_tokens.weight"][0] == shapes["lm_head.weight"][0] == size
