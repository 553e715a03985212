"""The built-in chat templates render the formats mergekit 0.1.5's files render (checked with
transformers' ``apply_chat_template`` on a tokenizer built here, bos ``<s>``, eos ``</s>``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from merging.chat_templates import BUILT_IN, check_chat_template

pytest.importorskip("transformers")

SYSTEM = {"role": "system", "content": " Be brief. "}
HI = {"role": "user", "content": "Hi there\n"}
HELLO = {"role": "assistant", "content": " Hello! "}
SUM = {"role": "user", "content": "Sum 2+2?"}
CONVERSATION = [SYSTEM, HI, HELLO, SUM]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    from tests.helpers.tiny import train_tokenizer

    path = Path(tmp_path_factory.mktemp("tok"))
    train_tokenizer(path)
    return AutoTokenizer.from_pretrained(path)


def render(tokenizer, name: str, messages, *, prompt: bool = True) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=BUILT_IN[name], tokenize=False, add_generation_prompt=prompt
    )


def test_mergekit_builtin_names_are_all_there_and_accepted():
    assert set(BUILT_IN) == {"alpaca", "chatml", "exaone", "llama3", "mistral"}
    assert all(check_chat_template(name) == name for name in BUILT_IN)


def test_chatml(tokenizer):
    assert render(tokenizer, "chatml", [HI, HELLO]) == (
        "<|im_start|>user\nHi there\n<|im_end|>\n<|im_start|>assistant\n Hello! <|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_exaone_opens_with_an_empty_system_turn_and_keeps_mergekits_indentation(tokenizer):
    assert render(tokenizer, "exaone", [HI, HELLO, SUM]) == (
        "        [|system|][|endofturn|]\n\n"
        "    [|user|]Hi there\n\n        \n\n"
        "    [|assistant|] Hello! \n        [|endofturn|]\n\n"
        "    [|user|]Sum 2+2?\n        \n\n"
        "    [|assistant|]\n"
    )
    with_system = render(tokenizer, "exaone", [SYSTEM, HI], prompt=False)
    assert with_system == "    [|system|] Be brief. \n        [|endofturn|]\n\n" + (
        "    [|user|]Hi there\n\n        \n\n"
    )


def test_llama3_trims_contents_and_puts_bos_first(tokenizer):
    assert render(tokenizer, "llama3", [SYSTEM, HI]) == (
        "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\n"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>\n"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_alpaca_sections_and_the_last_system_message(tokenizer):
    context = {"role": "user_context", "content": " ctx "}
    second = {"role": "system", "content": "Second."}
    assert render(tokenizer, "alpaca", [SYSTEM, HI, context, HELLO, second, SUM]) == (
        "Second.\n\n### Instruction:\nHi there\n\n### Input:\nctx\n\n### Response:\nHello!"
        "\n\n### Instruction:\nSum 2+2?### Response:\n"
    )
    # no system message: the blank line stays; no prompt after the assistant's turn
    assert render(tokenizer, "alpaca", [HI, HELLO]) == (
        "\n\n### Instruction:\nHi there\n\n### Response:\nHello!"
    )


def test_mistral_joins_the_system_message_to_the_first_turn_and_checks_alternation(tokenizer):
    from jinja2.exceptions import TemplateError

    assert render(tokenizer, "mistral", [*CONVERSATION[:3], SUM]) == (
        "<s> [INST]  Be brief. \n\nHi there\n [/INST]  Hello! </s> [INST] Sum 2+2? [/INST]"
    )
    assert render(tokenizer, "mistral", [HI]) == "<s> [INST] Hi there\n [/INST]"
    with pytest.raises(TemplateError, match="alternate"):
        render(tokenizer, "mistral", [HI, SUM])
    with pytest.raises(TemplateError, match="only user and assistant"):
        render(tokenizer, "mistral", [HI, {"role": "tool", "content": "x"}])
