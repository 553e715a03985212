"""Talking to a merge before pushing it: text generation with models kept loaded.

`ModelCache` keeps loaded (model, tokenizer) pairs between prompts and releases those idle
longer than ``idle_seconds`` (a daemon thread checks; `release_idle` can be called too).
`stream_text` generates from one model, yielding the text so far as tokens arrive; the
tokenizer's chat template is applied when it has one. `side_by_side` does that for several
models in turn (the merge, its base and each input) on the same prompt and settings.

>>> settings = GenerationSettings()  # greedy, 64 new tokens
>>> settings.do_sample
False
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)

DEFAULT_IDLE_SECONDS = 300.0


class GenerationSettings(BaseModel):
    """How to generate: greedy when ``temperature`` is 0, else sampling (seeded).

    Args:
        max_new_tokens (`int`): tokens to generate at most.
        temperature (`float`): 0 for greedy decoding; > 0 samples at that temperature.
        top_p (`float`): nucleus sampling mass (sampling only).
        top_k (`int`): keep the k most likely tokens (0: all; sampling only).
        seed (`int`): seeds the sampling, so a prompt gives the same text again.
        stop (`str`): stop once the new text contains this string ("" : run to
            `max_new_tokens` or the end-of-text token).
    """

    model_config = ConfigDict(frozen=True)

    max_new_tokens: int = Field(default=64, ge=1, le=1024)
    temperature: float = Field(default=0.0, ge=0.0, le=5.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    seed: int = 0
    stop: str = ""

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:  # unset the checkpoint's sampling defaults, which greedy decoding ignores anyway
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs


@dataclass
class LoadedModel:
    """A model and its tokenizer in memory, with when it was last used."""

    path: str
    model: Any
    tokenizer: Any
    last_used: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class ModelCache:
    """Loaded models by folder, kept between prompts, released after ``idle_seconds``.

    Args:
        idle_seconds (`float`): release a model not used for this long.
        max_models (`int`): keep at most this many (the least recently used goes first).
        device (`str`): where models are loaded (`"auto"`: accelerate's placement, or one device).
        clock (`Callable[[], float]`): time source (tests pass a fake one).
        reaper (`bool`): run a daemon thread that releases idle models.
    """

    def __init__(
        self,
        *,
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
        max_models: int = 6,
        device: str = "cpu",
        clock: Callable[[], float] = time.monotonic,
        reaper: bool = True,
    ) -> None:
        self.idle_seconds = idle_seconds
        self.max_models = max_models
        self.device = device
        self.clock = clock
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if reaper:
            interval = max(0.05, min(idle_seconds / 2, 30.0))
            thread = threading.Thread(target=self._reap, args=(interval,), daemon=True,
                                      name="model-cache-reaper")  # fmt: skip
            thread.start()

    def __contains__(self, path: object) -> bool:
        return str(path) in self._models

    def loaded(self) -> list[str]:
        return list(self._models)

    def get(self, path: str | Path) -> LoadedModel:
        """The loaded model at `path`, loading it on first use."""
        from evaluation.loading import load_model, load_tokenizer

        key = str(path)
        with self._lock:
            entry = self._models.get(key)
            if entry is None:
                logger.info("loading %s for generation", key)
                model = load_model(key, device=self.device, dtype="auto")
                entry = LoadedModel(key, model, load_tokenizer(key))
                self._models[key] = entry
                while len(self._models) > self.max_models:
                    oldest = min(self._models.values(), key=lambda e: e.last_used)
                    self._drop(oldest.path)
            entry.last_used = self.clock()
            return entry

    def release_idle(self) -> list[str]:
        """Release every model idle longer than `idle_seconds`; return their paths."""
        now = self.clock()
        with self._lock:
            idle = [k for k, e in self._models.items()
                    if now - e.last_used > self.idle_seconds and not e.lock.locked()]  # fmt: skip
            for key in idle:
                self._drop(key)
        if idle:
            logger.info("released %d idle model(s)", len(idle))
        return idle

    def clear(self) -> None:
        with self._lock:
            for key in list(self._models):
                self._drop(key)

    def close(self) -> None:
        self._stop.set()
        self.clear()

    def _drop(self, key: str) -> None:
        self._models.pop(key, None)
        gc.collect()

    def _reap(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.release_idle()
            except Exception:  # never let the reaper die
                logger.exception("releasing idle models failed")


def prompt_ids(tokenizer: Any, prompt: str) -> Any:
    """Token ids of `prompt` as a (1, n) tensor: through the chat template when the
    tokenizer has one (a single user turn plus the generation prompt), else plain text."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)  # fmt: skip
        return ids["input_ids"]
    return tokenizer(prompt, return_tensors="pt")["input_ids"]


def stream_text(entry: LoadedModel, prompt: str, settings: GenerationSettings) -> Iterator[str]:
    """Generate from `entry`; yield the decoded new text so far after each chunk of tokens."""
    import torch
    from transformers import TextIteratorStreamer

    from evaluation.loading import input_device

    tokenizer = entry.tokenizer
    ids = prompt_ids(tokenizer, prompt).to(input_device(entry.model))
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True,
                                    timeout=120.0)  # fmt: skip
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    failure: list[BaseException] = []

    def work() -> None:
        try:
            with entry.lock, torch.inference_mode():
                if settings.do_sample:
                    torch.manual_seed(settings.seed)
                stop = {"stop_strings": [settings.stop], "tokenizer": tokenizer}
                if not settings.stop:
                    stop = {}
                entry.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     streamer=streamer, pad_token_id=pad, **stop,
                                     **settings.generate_kwargs())  # fmt: skip
        except BaseException as err:  # re-raised in the caller's thread
            failure.append(err)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True, name="generate")
    thread.start()
    text = ""
    for chunk in streamer:
        if chunk:
            text += chunk
            yield text
    thread.join()
    if failure:
        raise failure[0]
    if not text:
        yield ""


def side_by_side(
    cache: ModelCache,
    models: Mapping[str, str | Path],
    prompt: str,
    settings: GenerationSettings,
) -> Iterator[dict[str, str]]:
    """Generate from each of `models` (label → folder) in turn on the same prompt; yield all
    texts so far (label → text; a model not started yet maps to "")."""
    texts = dict.fromkeys(models, "")
    for label, path in models.items():
        entry = cache.get(path)
        for text in stream_text(entry, prompt, settings):
            texts[label] = text
            yield dict(texts)
        entry.last_used = cache.clock()
    yield dict(texts)


def job_models(
    store: Any, merge_job: str, *, owner: str | None, token: str | None, endpoint: str | None
) -> dict[str, str]:
    """Label → local folder for `owner`'s finished merge job: the merge, its base and each
    full input (LoRA inputs are skipped), resolving Hub ids with the caller's token."""
    from app.workflows import merge_record
    from merging.sources import resolve_model

    _, recipe, merged = merge_record(store, merge_job, owner=owner)
    models = {"merge": str(merged)}
    names: dict[str, str] = {}
    if recipe.base_model:
        names["base"] = recipe.base_model
    for spec in recipe.inputs() if recipe.base_model else recipe.models:
        if spec.adapter is None and spec.model not in names.values():
            names[Path(spec.model).name or spec.model] = spec.model
    for label, name in names.items():
        models[label] = str(resolve_model(name, token=token, endpoint=endpoint).path)
    return models
