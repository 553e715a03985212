"""mergekit-yaml's command line, accepted by ``hubmerge merge``.

A user arriving from mergekit runs ``mergekit-yaml config.yml OUT [options]``; LazyMergekit's
notebooks, for one, end with ``mergekit-yaml config.yaml merge --copy-tokenizer --allow-crimes
--out-shard-size 1B --lazy-unpickle``. ``hubmerge merge config.yaml merge …`` takes the same
line: the output folder may be given as the second argument, and every option of mergekit's
``MergeOptions`` (mergekit/options.py) is accepted. An option either maps to a hubmerge setting
(`MAPPED`) or has no effect here, and then `apply` returns a note saying why (`NO_EFFECT`),
printed before the merge: never silently ignored.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from merging import Recipe
from merging.outputs import TORCH_DTYPES

UNNAMED_DTYPE_BYTES = 2  # a recipe without a dtype: mergekit's published merges are 16-bit
KMB = {"k": 10**3, "m": 10**6, "b": 10**9}


@dataclass(frozen=True)
class Flag:
    """One mergekit-yaml option: a switch (``--x`` / ``--no-x``) or one taking a value."""

    name: str
    value: Callable[[str], Any] | None = None  # parses the value; None: a switch
    metavar: str | None = None
    note: str = ""  # why it has no effect in hubmerge (`NO_EFFECT` flags only)
    help: str = ""  # what it does in hubmerge (`MAPPED` flags)
    when: bool = True  # a switch's value that has no effect ("--no-x" when False)

    @property
    def dest(self) -> str:
        return "mergekit_" + self.name.replace("-", "_")


def parse_kmb(text: str) -> int:
    """mergekit's sizes: a count with an optional K / M / B suffix (thousands, millions,
    billions), e.g. ``1B``; `argparse` type of ``--out-shard-size``."""
    text = text.strip()
    factor = KMB.get(text[-1:].lower(), 1)
    digits = text[:-1] if factor != 1 else text
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a count such as 500M or 1B")
    return int(digits) * factor


MAPPED = (
    Flag("allow-crimes", help="merge different architectures (the recipe's allow_crimes)"),
    Flag("cuda", help="as --device cuda"),
    Flag("gpu-rich", help="as --device cuda (the rest it implies has no effect here)"),
    Flag("out-shard-size", parse_kmb, "PARAMETERS",
         help="shard cap in parameters (500M, 1B): --shard-size at the output dtype's width"),
    Flag("copy-tokenizer", help="copy the base's tokenizer (default; a built one is written)"),
    Flag("random-seed", int, "SEED", help="seed of the random methods (the recipe's seed)"),
    Flag("num-threads", int, "N", help="compute threads"),
    Flag("quiet", help="no progress bars"),
)  # fmt: skip
_READS = "hubmerge reads each tensor from memory-mapped safetensors shards as it merges it"
NO_EFFECT = (
    Flag("lazy-unpickle", note=f"{_READS}; nothing is unpickled"),
    Flag("low-cpu-memory", note=f"{_READS}, so memory stays bounded by the largest tensors"),
    Flag("read-to-gpu", note=f"{_READS} and moves it to the --device it merges on"),
    Flag("multi-gpu", note="a merge runs on one device (--device)"),
    Flag("async-write", note="hubmerge writes each finished tensor while it computes the next"),
    Flag("write-threads", int, "N", note="hubmerge writes from one thread beside its compute"),
    Flag("clone-tensors", note="hubmerge writes every output tensor from its own buffer"),
    Flag("trust-remote-code", note="hubmerge reads configs and weights only, never model code"),
    Flag(
        "transformers-cache",
        str,
        "DIR",
        note="downloads go to huggingface_hub's cache; set HF_HOME or HF_HUB_CACHE to move it",
    ),
    Flag(
        "lora-merge-cache",
        str,
        "DIR",
        note="a model+adapter source is folded tensor by tensor as it is read; nothing is cached",
    ),
    Flag(
        "lora-merge-dtype",
        str,
        "DTYPE",
        note="a model+adapter source is folded in float32 as it is read (see compute_dtype)",
    ),
    Flag("safe-serialization", when=False, note="hubmerge writes safetensors only"),
    Flag(
        "write-model-card",
        when=False,
        note="hubmerge always writes its model card: it records the recipe and the lineage",
    ),
)
FLAGS = MAPPED + NO_EFFECT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """mergekit-yaml's options, in a group of their own (`FLAGS`), and its ``-v``."""
    group = parser.add_argument_group(
        "mergekit-yaml options", "accepted as mergekit-yaml takes them (see the README)"
    )
    for flag in FLAGS:
        if flag.value is None:
            group.add_argument(
                f"--{flag.name}", dest=flag.dest, action=argparse.BooleanOptionalAction,
                default=None, help=flag.help or f"no effect: {flag.note}",
            )  # fmt: skip
        else:
            group.add_argument(
                f"--{flag.name}", *(["-j"] if flag.name == "num-threads" else []),
                dest=flag.dest, type=flag.value, metavar=flag.metavar,
                help=flag.help or f"no effect: {flag.note}",
            )  # fmt: skip
    group.add_argument(
        "-v", dest="mergekit_verbosity", action="count", default=0,
        help="mergekit's verbosity: as hubmerge -v",
    )  # fmt: skip


def given(args: argparse.Namespace, name: str) -> Any:
    return getattr(args, "mergekit_" + name.replace("-", "_"), None)


def apply(
    args: argparse.Namespace, recipe: Recipe, options: dict[str, Any]
) -> tuple[Recipe, dict[str, Any], list[str]]:
    """The recipe and MergeOptions fields as the mergekit options given say, and a note for
    each given option that has no effect here."""
    changes: dict[str, Any] = {}
    options = dict(options)
    if given(args, "allow-crimes"):
        changes["allow_crimes"] = True
    if given(args, "random-seed") is not None:
        changes["seed"] = given(args, "random-seed")
    if (given(args, "cuda") or given(args, "gpu-rich")) and options.get("device") is None:
        options["device"] = "cuda"
    if options.get("device") == "auto":  # mergekit's --device auto: hubmerge's default
        options["device"] = None
    if given(args, "out-shard-size") is not None:
        named = TORCH_DTYPES.get(recipe.out_dtype or recipe.dtype or "")
        width = UNNAMED_DTYPE_BYTES if named is None else named.itemsize
        options["shard_size"] = given(args, "out-shard-size") * width
    if given(args, "copy-tokenizer") is False:
        options["copy_tokenizer"] = False
    if given(args, "num-threads") is not None:
        options["threads"] = given(args, "num-threads")
    notes = []
    for flag in NO_EFFECT:
        value = given(args, flag.name)
        if value is not None and (flag.value is not None or value is flag.when):
            spelled = flag.name if flag.value is not None or flag.when else f"no-{flag.name}"
            notes.append(f"--{spelled} has no effect here: {flag.note}")
    if given(args, "gpu-rich"):
        notes.append(
            "--gpu-rich: the merge runs on cuda; its --low-cpu-memory / --read-to-gpu / "
            "--multi-gpu have no effect here (a merge streams on one device)"
        )
    if changes:
        recipe = recipe.model_copy(update=changes)
    return recipe, options, notes


def quiet(args: argparse.Namespace) -> bool:
    return bool(given(args, "quiet"))


__all__ = ["FLAGS", "Flag", "add_arguments", "apply", "parse_kmb", "quiet"]
