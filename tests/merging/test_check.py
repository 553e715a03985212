"""Compatibility checks from headers and configs only."""

from __future__ import annotations

import pytest

from merging.check import SourceInfo, compare_sources, is_vocab_tensor
from merging.errors import (
    IncompatibleModelsError,
    ShapeMismatchError,
    VocabMismatchError,
)
from merging.io.headers import TensorHeader


def _info(label, vocab=100, hidden=8, *, arch="LlamaForCausalLM", tie=False, extra=None, **over):
    shapes = {
        "model.embed_tokens.weight": ((vocab, hidden), "BF16"),
        "model.layers.0.mlp.up_proj.weight": ((2 * hidden, hidden), "BF16"),
        "model.layers.1.mlp.up_proj.weight": ((2 * hidden, hidden), "BF16"),
        "model.norm.weight": ((hidden,), "BF16"),
        "lm_head.weight": ((vocab, hidden), "BF16"),
        "rotary.inv_freq": ((hidden // 2,), "I64"),
        **(extra or {}),
    }
    for name, shape in over.items():
        shapes[name.replace("__", ".")] = (shape, "BF16")
    headers = {n: TensorHeader(n, s, d) for n, (s, d) in shapes.items()}
    config = {"architectures": [arch], "vocab_size": vocab, "tie_word_embeddings": tie}
    return SourceInfo(label, headers, config)


def test_compatible_sources():
    report = compare_sources(_info("base"), [_info("a"), _info("b")], out_dtype="float32")
    assert report.ok
    report.raise_for_errors()
    assert [h.name for h in report.output] == list(_info("base").headers)
    dtypes = {h.name: h.dtype for h in report.output}
    assert dtypes["model.norm.weight"] == "F32"
    assert dtypes["rotary.inv_freq"] == "I64"  # non-float tensors keep their dtype
    assert report.output_bytes == sum(h.nbytes for h in report.output)
    assert "mergeable" in report.render()


def test_shape_mismatch_names_tensor_and_both_shapes():
    other = _info("org/other", model__layers__1__mlp__up_proj__weight=(16, 9))
    report = compare_sources(_info("org/base"), [other], out_dtype="bfloat16")
    assert not report.ok
    with pytest.raises(ShapeMismatchError) as caught:
        report.raise_for_errors()
    message = str(caught.value)
    assert "model.layers.1.mlp.up_proj.weight" in message
    assert "(16, 9)" in message
    assert "(16, 8)" in message
    assert "org/other" in message
    assert "NOT mergeable" in report.render()


def test_vocab_mismatch_names_both_sizes():
    report = compare_sources(_info("base", 100), [_info("ft", 104)], out_dtype="float32")
    with pytest.raises(VocabMismatchError) as caught:
        report.raise_for_errors()
    message = str(caught.value)
    assert "base: 100" in message
    assert "ft: 104" in message
    assert "vocab_policy" in message
    assert report.vocab_rows == {"base": 100, "ft": 104}


@pytest.mark.parametrize(("policy", "rows"), [("base", 100), ("union", 104)])
def test_vocab_policies_set_output_rows(policy, rows):
    report = compare_sources(
        _info("base", 100), [_info("ft", 104), _info("ft2", 96)], out_dtype="float32",
        vocab_policy=policy,
    )  # fmt: skip
    report.raise_for_errors()
    shapes = {h.name: h.shape for h in report.output}
    assert shapes["model.embed_tokens.weight"] == (rows, 8)
    assert shapes["lm_head.weight"] == (rows, 8)
    assert shapes["model.norm.weight"] == (8,)
    assert report.warnings


def test_non_vocab_row_difference_is_a_shape_mismatch_even_with_a_policy():
    other = _info("ft", model__layers__0__mlp__up_proj__weight=(17, 8))
    report = compare_sources(_info("base"), [other], out_dtype="float32", vocab_policy="union")
    with pytest.raises(ShapeMismatchError):
        report.raise_for_errors()


def test_missing_tensor_and_architecture_are_errors():
    other = _info("ft", arch="MistralForCausalLM")
    del other.headers["model.norm.weight"]
    report = compare_sources(_info("base"), [other], out_dtype="float32")
    with pytest.raises(IncompatibleModelsError) as caught:
        report.raise_for_errors()
    assert "architectures differ" in str(caught.value)
    assert "lacks 1 tensor(s)" in str(caught.value)
    assert "model.norm.weight" in str(caught.value)


def test_allow_crimes_lets_different_architectures_merge_where_their_tensors_line_up():
    mistral = _info("ft", arch="MistralForCausalLM")
    refused = compare_sources(_info("base"), [mistral], out_dtype="float32")
    assert not refused.ok
    assert "set allow_crimes: true" in refused.errors[0]
    allowed = compare_sources(_info("base"), [mistral], out_dtype="float32", allow_crimes=True)
    assert allowed.ok
    assert "allowed by allow_crimes" in allowed.warnings[0]
    del mistral.headers["model.norm.weight"]  # tensors are still checked name by name
    missing = compare_sources(_info("base"), [mistral], out_dtype="float32", allow_crimes=True)
    assert not missing.ok
    assert "lacks 1 tensor(s)" in missing.errors[0]


def test_extra_tensors_and_tied_embeddings_warn():
    other = _info("ft", tie=True, extra={"extra.weight": ((2,), "F32")})
    report = compare_sources(_info("base"), [other], out_dtype="float32")
    assert report.ok
    assert any("extra tensor" in w for w in report.warnings)
    assert any("tie_word_embeddings" in w for w in report.warnings)


def test_peak_memory_estimate_grows_with_sources_not_layers():
    one = compare_sources(_info("b"), [_info("a")], out_dtype="float32")
    two = compare_sources(_info("b"), [_info("a"), _info("c")], out_dtype="float32")
    assert two.peak_memory_bytes > one.peak_memory_bytes > 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.embed_tokens.weight", True),
        ("lm_head.weight", True),
        ("transformer.wte.weight", True),
        ("model.layers.0.mlp.up_proj.weight", False),
    ],
)
def test_is_vocab_tensor(name, expected):
    assert is_vocab_tensor(name) is expected
