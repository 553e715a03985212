"""The output vocabulary and embedding rows mapped by token, as mergekit 0.1.5 builds them
(``mergekit/tokenizer/build.py`` and ``embed.py``).

With ``tokenizer_source`` (``union``, ``base`` or a model) or a ``tokenizer:`` block, the output
tokenizer is the base's, the named model's, or the union (the base's tokenizer plus every other
token of the sources, added as tokens); each source's embedding and LM-head rows are then
re-ordered to the output vocabulary: a token's row comes from the source's own row for that
token; a source that lacks the token gets a default row — the one model's row when only one
model has it, the base's when the base has it, else the mean of the models that have it, zero
when none does — unless the ``tokens:`` block names the source (``force`` uses it even for
models that have the token). Rows beyond the vocabulary (``pad_to_multiple_of``) are the mean
of the real rows. Without a tokenizer setting the base's tokenizer is copied and rows merge by
index (``vocab_policy``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from merging.chat_templates import BUILT_IN
from merging.errors import RecipeError, VocabMismatchError
from merging.io.headers import SourceInfo
from merging.plan import TensorPlan
from merging.recipe import Recipe
from merging.tokenizer_spec import ModelToken, TokenSpec, ZeroToken

logger = logging.getLogger(__name__)


def vocab_models(recipe: Recipe) -> list[str]:
    """Models the tokenizer settings name besides the recipe's sources (to resolve them)."""
    names = []
    if recipe.tokenizer_choice not in ("base", "union"):
        names.append(recipe.tokenizer_choice)
    for spec in (recipe.tokenizer.tokens if recipe.tokenizer else {}).values():
        if isinstance(spec.source, ModelToken):
            names.append(spec.source.model)
    return names


def _load(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, use_fast=True)


def _beyond(tokenizer: Any, size: int) -> list[str]:
    """The tokenizer's tokens whose ids have no embedding row (id ≥ the model's vocab_size)."""
    return sorted((t for t, i in tokenizer.get_vocab().items() if i >= size), key=str)


def _examples(tokens: list[str]) -> str:
    shown = ", ".join(repr(t) for t in tokens[:5])
    return shown + (f", … ({len(tokens)} in all)" if len(tokens) > 5 else "")


def _strip(tokenizer: Any, size: int, where: str, warnings: list[str]) -> Any:
    """The tokenizer without its tokens at ids ≥ ``size`` (mergekit's ``get_stripped_tokenizer``:
    they leave the vocabulary, the added tokens and the merges that use them; BPE only).

    mergekit keeps a merge whose *result* is stripped, which the tokenizers library then
    refuses to load; such merges are dropped here too.
    """
    unused = _beyond(tokenizer, size)
    if not unused:
        return tokenizer
    data = json.loads(tokenizer._tokenizer.to_str()) if tokenizer.is_fast else None
    if data is None or data["model"]["type"] != "BPE":
        kind = "a slow tokenizer" if data is None else f"a {data['model']['type']} tokenizer"
        raise VocabMismatchError(
            f"{where}: {len(unused)} token(s) at ids ≥ its vocab_size {size} "
            f"({_examples(unused)}) and {kind}; only BPE tokenizers can be stripped (as in "
            "mergekit); use a tokenizer_source whose tokens all have embedding rows"
        )
    gone = set(unused)
    prefix = data["model"].get("continuing_subword_prefix") or ""

    def keep(merge: str | list[str]) -> bool:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        joined = left + right.removeprefix(prefix)
        return left not in gone and right not in gone and joined not in gone

    data["added_tokens"] = [e for e in data["added_tokens"] if e["id"] < size]
    data["model"]["vocab"] = {t: i for t, i in data["model"]["vocab"].items() if t not in gone}
    data["model"]["merges"] = [m for m in data["model"]["merges"] if keep(m)]
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(data))
    warnings.append(
        f"{where}: {len(unused)} token(s) at ids ≥ its vocab_size {size} have no embedding "
        f"row and are stripped from the output tokenizer ({_examples(unused)}), as mergekit does"
    )
    return tokenizer


def _union(base: Any, others: list[tuple[str, Any, int]], warnings: list[str]) -> Any:
    """The base tokenizer plus every token of the others it lacks (mergekit's
    ``build_union_tokenizer``): normal tokens first, then added (special) tokens, each source's
    in id order (mergekit takes ``get_vocab()``'s order, which changes from run to run). A
    source's tokens at ids ≥ its vocab_size (no embedding row) are left out, with a warning."""
    added: dict[str, Any] = {}
    normal: dict[str, None] = {}
    for key, tokenizer, size in others:
        special = {info.content for info in tokenizer.added_tokens_decoder.values()}
        vocab = tokenizer.get_vocab()  # a hash map's order, which differs per process:
        for token in sorted(vocab, key=vocab.__getitem__):  # in id order, for reproducibility
            if vocab[token] < size and token not in special:
                normal.setdefault(token)
        for index, info in tokenizer.added_tokens_decoder.items():
            if index < size:
                added.setdefault(info.content, info)
        unused = _beyond(tokenizer, size)
        if unused:
            warnings.append(
                f"tokenizer of {key}: {len(unused)} token(s) at ids ≥ its vocab_size {size} "
                f"have no embedding row and are left out of the union ({_examples(unused)}), "
                "as mergekit does"
            )
    with tempfile.TemporaryDirectory() as tmp:
        base.save_pretrained(tmp)
        out = _load(Path(tmp))
    have = base.get_vocab()
    out.add_tokens([t for t in normal if t not in have and t not in added])
    out.add_tokens(list(added.values()))
    return out


@dataclass
class Vocab:
    """The output tokenizer and, per source, the row of each output token (-1: lacks it)."""

    tokenizer: Any
    index: dict[str, torch.Tensor]
    base: str | None
    tokens: dict[str, TokenSpec]
    original: dict[str, dict[str, int]]
    rows: int
    warnings: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.tokenizer.get_vocab())

    def map_rows(self, keys: list[str], tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each source's rows re-ordered to the output vocabulary (in its stored dtype)."""
        vocab = self.tokenizer.get_vocab()
        count = self.size
        present = torch.stack([self.index[k] >= 0 for k in keys])
        forced = torch.zeros(count, dtype=torch.bool)
        configured = {vocab[t]: spec for t, spec in self.tokens.items() if t in vocab}
        for token_id, spec in configured.items():
            forced[token_id] = spec.force
        needed = (present.sum(0) < len(keys)) | forced
        ids = needed.nonzero().squeeze(1)  # only these rows need a default: few, usually
        position = torch.full((count,), -1, dtype=torch.long)
        position[ids] = torch.arange(len(ids))
        defaults = self._defaults(keys, tensors, present[:, ids], ids, configured)
        out = []
        for k, (key, tensor) in enumerate(zip(keys, tensors, strict=True)):
            index = self.index[key]
            new = torch.zeros((self.rows, *tensor.shape[1:]), dtype=tensor.dtype)
            own = present[k] & ~forced
            new[:count][own] = tensor[index[own]]
            fill = needed & ~own
            new[:count][fill] = defaults[position[fill]].to(tensor.dtype)
            if self.rows > count:  # padding rows: the mean of the real ones (mergekit)
                new[count:] = (new[:count].sum(0, dtype=torch.float32) / count).to(tensor.dtype)
            out.append(new)
        return out

    def _defaults(
        self,
        keys: list[str],
        tensors: list[torch.Tensor],
        present: torch.Tensor,
        ids: torch.Tensor,
        configured: dict[int, TokenSpec],
    ) -> torch.Tensor:
        """Default rows of the tokens ``ids`` (``present``: which model has each of them)."""
        width = tensors[0].shape[1:]
        defaults = torch.zeros((len(ids), *width), dtype=torch.float32)
        number = present.sum(0)
        base = keys.index(self.base) if self.base in keys else None
        at = {int(token_id): j for j, token_id in enumerate(ids)}
        automatic = torch.ones(len(ids), dtype=torch.bool)
        for token_id, spec in configured.items():
            if token_id in at:
                automatic[at[token_id]] = spec.source is None
        base_has = present[base] if base is not None else torch.zeros_like(automatic)
        by_base = automatic & (number > 1) & base_has
        averaged = automatic & (number > 1) & ~by_base
        for k, tensor in enumerate(tensors):
            index = self.index[keys[k]][ids]
            single = automatic & (number == 1) & present[k]
            rows = single | (by_base if k == base else torch.zeros_like(single))
            defaults[rows] = tensor[index[rows]].float()
            share = averaged & present[k]
            defaults[share] += tensor[index[share]].float() / number[share].unsqueeze(1)
        for token_id, spec in configured.items():
            if spec.source is not None and token_id in at:
                defaults[at[token_id]] = self._configured(keys, tensors, token_id, spec)
        return defaults

    def _configured(
        self, keys: list[str], tensors: list[torch.Tensor], token_id: int, spec: TokenSpec
    ) -> torch.Tensor:
        source = spec.source
        if isinstance(source, ZeroToken):
            return torch.zeros(tensors[0].shape[1:])
        model = source.model if isinstance(source, ModelToken) else str(source)
        key = _key_for(model, keys)
        tensor = tensors[keys.index(key)]
        if isinstance(source, ModelToken):
            row = source.token_id
            if row is None:
                row = self.original[key].get(str(source.token), -1)
            if not 0 <= row < tensor.shape[0]:
                raise VocabMismatchError(f"tokenizer.tokens: {source} is not a row of {model}")
        else:
            row = int(self.index[key][token_id])
            if row < 0:
                raise VocabMismatchError(f"tokenizer.tokens: {model} lacks token id {token_id}")
        return tensor[row].float()


def _key_for(model: str, keys: list[str]) -> str:
    for key in keys:
        if key == model or key.partition("+")[0] == model:
            return key
    raise RecipeError(f"tokenizer.tokens: {model} is not a source of this tensor ({keys})")


def build_vocab(
    recipe: Recipe,
    plan: TensorPlan,
    paths: dict[str, Path],
    infos: dict[str, SourceInfo],
    *,
    named: dict[str, Path] | None = None,
) -> Vocab | None:
    """The output vocabulary, or `None` when the recipe sets no tokenizer source (then the
    base's tokenizer is copied and rows merge by index).

    Args:
        paths: each source's folder, by source key.
        named: folders of the models `vocab_models` lists (a ``tokenizer_source`` model).
    """
    if recipe.tokenizer is None and recipe.tokenizer_source is None:
        return None
    base_key = recipe.base_model if recipe.base_model in paths else next(iter(paths))
    loaded: dict[str, Any] = {}
    for key, path in paths.items():
        try:
            loaded[key] = _load(path)
        except (OSError, ValueError) as err:  # mergekit: assume the base's tokenizer
            logger.warning("no tokenizer for %s (%s); assuming the base's", key, err)
    if base_key not in loaded:
        raise VocabMismatchError(f"{base_key}: no tokenizer to build the output vocabulary from")
    sizes = {k: infos[k].vocab_size or len(loaded.get(k, loaded[base_key])) for k in paths}
    warnings: list[str] = []
    choice = recipe.tokenizer_choice
    if choice in ("base", "union"):  # mergekit strips the base's tokenizer for both
        where = f"tokenizer of {base_key}"
        loaded[base_key] = _strip(loaded[base_key], sizes[base_key], where, warnings)
    if choice == "base":
        tokenizer = loaded[base_key]
    elif choice == "union":
        others = [(k, loaded[k], sizes[k]) for k in loaded]
        tokenizer = _union(loaded[base_key], others, warnings)
    else:
        tokenizer = _load(paths.get(choice) or (named or {}).get(choice) or Path(choice))
    tokens = dict(recipe.tokenizer.tokens) if recipe.tokenizer else {}
    if tokens:
        tokenizer.add_tokens([t for t in tokens if t not in tokenizer.get_vocab()])
    out_vocab = tokenizer.get_vocab()
    index = {}
    for key in paths:
        own = loaded.get(key, loaded[base_key]).get_vocab()
        rows = torch.full((len(out_vocab),), -1, dtype=torch.long)
        beyond = []
        for token, new_id in out_vocab.items():
            old = own.get(token, -1)
            rows[new_id] = old if old < sizes[key] else -1
            if old >= sizes[key]:
                beyond.append(token)
        if beyond:  # mergekit: KeyError in PermutedVocabulary; here the model lacks them
            warnings.append(
                f"{key}: {len(beyond)} output token(s) are at ids ≥ its vocab_size "
                f"{sizes[key]} in its tokenizer ({_examples(sorted(beyond, key=str))}); they "
                "take default rows, as tokens the model lacks"
            )
        index[key] = rows
    pad = recipe.tokenizer.pad_to_multiple_of if recipe.tokenizer else None
    count = len(out_vocab)
    padded = -(-count // pad) * pad if pad else count
    original = {k: loaded.get(k, loaded[base_key]).get_vocab() for k in paths}
    for warning in warnings:
        logger.warning("%s", warning)
    return Vocab(tokenizer, index, base_key, tokens, original, padded, warnings)


def chat_template(recipe: Recipe, paths: list[Path]) -> str | None:
    """The template ``chat_template:`` names: ``auto`` takes the most common one among the
    sources (mergekit's rule), a built-in name its template, else the Jinja text itself."""
    value = recipe.chat_template
    if value == "auto":
        found = []
        for path in paths:
            try:
                template = _load(path).chat_template
            except (OSError, ValueError):
                continue
            if isinstance(template, dict):
                template = template.get("default")
            if template:
                found.append(template.strip())
        return Counter(found).most_common(1)[0][0] if found else None
    return BUILT_IN.get(value, value) if value else None


def write_tokenizer(
    recipe: Recipe, vocab: Vocab | None, donor: Path, paths: dict[str, Path]
) -> dict[str, bytes] | None:
    """The output tokenizer's files, or `None` when the donor's files are copied as they are."""
    if vocab is None and not recipe.chat_template:
        return None
    tokenizer = vocab.tokenizer if vocab is not None else _load(donor)
    template = chat_template(recipe, list(dict.fromkeys(paths.values())))
    if template:
        tokenizer.chat_template = template
    elif recipe.chat_template:
        logger.warning("chat_template: auto found no template among the sources")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


__all__ = ["Vocab", "build_vocab", "chat_template", "vocab_models", "write_tokenizer"]
