"""Generation for the Try step: streamed text equals plain `generate`, the chat template is
applied when present, models stay loaded between prompts and are released when idle."""

from __future__ import annotations

import itertools
import time

import pytest
import torch

from app.generate import GenerationSettings, ModelCache, prompt_ids, side_by_side, stream_text

TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"


@pytest.fixture(scope="module")
def folders(demo_models):
    """Two models of the demo zoo (they write words, so their text streams in pieces)."""
    return {"a": demo_models.models["tiny-math"], "b": demo_models.models["tiny-base"]}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def reference(entry, prompt: str, **kwargs) -> str:
    ids = prompt_ids(entry.tokenizer, prompt)
    out = entry.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                               pad_token_id=entry.tokenizer.eos_token_id, **kwargs)  # fmt: skip
    return entry.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_streamed_greedy_text_grows_and_equals_plain_generate(folders):
    cache = ModelCache(reaper=False)
    entry = cache.get(folders["a"])
    settings = GenerationSettings(max_new_tokens=12)
    texts = list(stream_text(entry, "double 7 is", settings))
    assert len(texts) >= 2  # streamed in pieces, not all at once
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
    assert texts[-1] == reference(entry, "double 7 is", max_new_tokens=12, do_sample=False)
    assert texts[-1].startswith(" 14.")  # the math fine-tune knows its skill


def test_a_stop_string_ends_the_text(folders):
    entry = ModelCache(reaper=False).get(folders["a"])
    texts = list(stream_text(entry, "double 7 is", GenerationSettings(stop=".")))
    assert texts[-1] == " 14."  # not the 64 tokens it would ramble on for


def test_sampling_is_seeded(folders):
    cache = ModelCache(reaper=False)
    entry = cache.get(folders["a"])
    hot = GenerationSettings(max_new_tokens=16, temperature=1.5, top_p=0.95, seed=3)
    first = list(stream_text(entry, "the cow says", hot))[-1]
    assert list(stream_text(entry, "the cow says", hot))[-1] == first
    assert hot.generate_kwargs()["do_sample"] is True
    assert GenerationSettings().generate_kwargs()["do_sample"] is False


def test_the_chat_template_is_applied_when_the_tokenizer_has_one(folders):
    entry = ModelCache(reaper=False).get(folders["a"])
    plain = prompt_ids(entry.tokenizer, "hello")
    assert plain.tolist() == [entry.tokenizer("hello")["input_ids"]]
    entry.tokenizer.chat_template = TEMPLATE
    try:
        chat = prompt_ids(entry.tokenizer, "hello")
    finally:
        entry.tokenizer.chat_template = None
    expected = entry.tokenizer("<s>user: hello</s>", add_special_tokens=False)["input_ids"]
    assert chat.tolist() == [expected]


def test_models_stay_loaded_between_prompts_and_are_released_when_idle(folders):
    clock = Clock()
    cache = ModelCache(idle_seconds=60, clock=clock, reaper=False)
    first = cache.get(folders["a"])
    cache.get(folders["b"])
    clock.now = 50
    assert cache.get(folders["a"]) is first  # no second load
    clock.now = 100  # a: 50 s idle, b: 100 s idle
    assert cache.release_idle() == [str(folders["b"])]
    assert str(folders["a"]) in cache
    assert str(folders["b"]) not in cache
    clock.now = 200
    cache.release_idle()
    assert cache.loaded() == []
    assert cache.get(folders["a"]) is not first  # loaded afresh


def test_the_reaper_thread_releases_idle_models(folders):
    cache = ModelCache(idle_seconds=0.2)
    try:
        cache.get(folders["a"])
        deadline = time.monotonic() + 10
        while cache.loaded() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cache.loaded() == []
    finally:
        cache.close()


def test_side_by_side_streams_each_model_in_turn(folders):
    cache = ModelCache(reaper=False)
    settings = GenerationSettings(max_new_tokens=6)
    models = {"merge": folders["a"], "base": folders["b"]}
    updates = list(side_by_side(cache, models, "the cow says", settings))
    assert list(updates[0]) == ["merge", "base"]
    assert updates[0]["base"] == ""  # the base has not started while the merge streams
    final = updates[-1]
    assert final["merge"] == reference(cache.get(folders["a"]), "the cow says", max_new_tokens=6,
                                       do_sample=False)  # fmt: skip
    assert final["base"] == reference(cache.get(folders["b"]), "the cow says", max_new_tokens=6,
                                      do_sample=False)  # fmt: skip
