"""Opt-in: a TIES merge of the real SmolLM2 zoo keeps a meaningful share of every skill.

Runs only with the cached zoo (``python -m benchmarks.zoo build``) AND ``HUBMERGE_RUN_ZOO=1``;
CI never has either. Merges on CPU and scores 30 held-out test items per skill.
"""

from __future__ import annotations

import os

import pytest

from benchmarks import zoo

pytestmark = [
    pytest.mark.zoo,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("HUBMERGE_RUN_ZOO") != "1" or not zoo.zoo_ready(),
        reason="needs the cached model zoo and HUBMERGE_RUN_ZOO=1",
    ),
]

ITEMS = 30


def test_ties_merge_keeps_each_skill(tmp_path):
    from benchmarks import merge_quality as mq

    manifest = zoo.load_manifest()
    test = {skill: rows[:ITEMS] for skill, rows in zoo.load_items("test").items()}
    # λ and density chosen on the validation split by merge_quality (see README_quality.md)
    recipe = mq.merge_recipe("ties", {"lambda": 1.5, "density": 0.3}, manifest)
    mq.run_merge(recipe, tmp_path / "ties", "cpu")

    def accuracy(path):
        model, tokenizer = mq.load_causal_lm(path, "cpu")
        return mq.skill_accuracy([model], tokenizer, test, "cpu")

    base = accuracy(manifest["base"])
    merged = accuracy(tmp_path / "ties")
    for skill in zoo.SKILLS:
        spec = accuracy(manifest["specialists"][skill]["full"])[skill]
        assert spec > base[skill] + 10, f"{skill}: the specialist learned nothing"
        kept = (merged[skill] - base[skill]) / (spec - base[skill])
        assert kept >= 0.5, f"{skill}: TIES kept {kept:.0%} of the gain ({merged}, base {base})"
