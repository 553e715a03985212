"""The zoo's three skills (add, upper, prime): exactly scored items from a seed, chat prompts,
and answer normalisation."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SKILLS = ("add", "upper", "prime")
SYSTEM = "Reply with the answer only."
SEED = 1234
N_TEST = 100
N_VAL = 40


@dataclass(frozen=True)
class Item:
    skill: str
    prompt: str
    answer: str


def _words(tokenizer: Any) -> list[str]:
    """Lower-case ASCII words of 4-8 letters that are whole tokens (after a space)."""
    words = set()
    for token in tokenizer.get_vocab():
        if token.startswith("Ġ"):
            word = token[1:]
            if 4 <= len(word) <= 8 and word.isascii() and word.isalpha() and word.islower():
                words.add(word)
    return sorted(words)


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def make_items(tokenizer: Any, seed: int = SEED) -> dict[str, dict[str, list[Item]]]:
    """``{skill: {"train"|"val"|"test": [Item]}}``; splits are disjoint by construction.

    Test and validation take the first `N_TEST` / `N_VAL` distinct inputs of a seeded shuffle;
    training draws from the rest only.
    """
    rng = random.Random(seed)
    out: dict[str, dict[str, list[Item]]] = {}

    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    rng.shuffle(pairs)
    add = [Item("add", f"What is {a}+{b}?", str(a + b)) for a, b in pairs]
    out["add"] = {"test": add[:N_TEST], "val": add[N_TEST : N_TEST + N_VAL]}
    out["add"]["train"] = add[N_TEST + N_VAL :]

    words = _words(tokenizer)
    rng.shuffle(words)
    upper = [Item("upper", f"Write the word '{w}' in capital letters.", w.upper()) for w in words]
    out["upper"] = {"test": upper[:N_TEST], "val": upper[N_TEST : N_TEST + N_VAL]}
    out["upper"]["train"] = upper[N_TEST + N_VAL :]

    primes = [n for n in range(2, 1000) if _is_prime(n)]
    composites = [n for n in range(4, 1000) if not _is_prime(n)]
    rng.shuffle(primes)
    rng.shuffle(composites)

    def prime_items(ps: Sequence[int], cs: Sequence[int]) -> list[Item]:
        items = [Item("prime", f"Is {n} a prime number? Answer yes or no.", "yes") for n in ps]
        items += [Item("prime", f"Is {n} a prime number? Answer yes or no.", "no") for n in cs]
        rng.shuffle(items)
        return items

    half_t, half_v = N_TEST // 2, N_VAL // 2
    out["prime"] = {
        "test": prime_items(primes[:half_t], composites[:half_t]),
        "val": prime_items(primes[half_t : half_t + half_v], composites[half_t : half_t + half_v]),
        # balanced: every remaining prime, as many composites
        "train": prime_items(
            primes[half_t + half_v :],
            composites[half_t + half_v : half_t + half_v + len(primes) - half_t - half_v],
        ),
    }
    return out


def chat_prompt(tokenizer: Any, prompt: str) -> str:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def normalise(skill: str, text: str) -> str:
    """The scored answer: first line, stripped of spaces and a final period (lower for yes/no)."""
    text = text.strip().split("\n")[0].strip().rstrip(".").strip()
    return text.lower() if skill == "prime" else text
