"""Activation matching: permute B so that its units fire like A's on calibration texts.

Both models read the same token ids (A's tokenizer); at every permutation point the
cross-moment ``X[i, j] = Σ_tokens a_i · b_j`` of the two models' activations is collected:

* residual stream: the embedding output and every decoder layer's output, summed;
* MLP hidden units: the input of ``down_proj``;
* attention: the outputs of q/k/v_proj (pre-rotary) and the input of ``o_proj`` (per query
  head and value dimension), combined exactly as the weight-matching cost blocks are.

One assignment per permutation then solves it (no coordinate ascent: activations of B do not
depend on B's basis). Memory: both models are run one after the other; A's activations at every
point are kept (float32, on the CPU) for the calibration tokens only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from merging.align.matching import HeadBlocks, assignment, solve_heads
from merging.align.perms import Permutations
from merging.align.spec import RESIDUAL, Axis, ModelSpec
from merging.errors import AlignmentError

logger = logging.getLogger(__name__)

DEFAULT_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "In 1969, astronauts first walked on the Moon, watched by millions on television.",
    "def add(a, b):\n    return a + b\n",
    "Water boils at 100 degrees Celsius at sea level, and freezes at zero.",
    "She opened the old book and read the first line aloud to the children.",
    "The capital of France is Paris; the capital of Italy is Rome.",
    "3 plus 4 is 7, and 12 minus 5 is 7 as well.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
]


def load_texts(path: str | Path | None) -> list[str]:
    """Calibration texts: ``{"input", "output"}`` jsonl rows (joined), or one text per line.

    Raises:
        `AlignmentError`: the file cannot be read or holds no text.
    """
    if path is None:
        return list(DEFAULT_TEXTS)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise AlignmentError(f"cannot read calibration examples {path}: {err.strerror}") from None
    texts = []
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = line
        if isinstance(row, dict) and "input" in row:
            texts.append(str(row["input"]) + str(row.get("output", "")))
        elif isinstance(row, dict) and "text" in row:
            texts.append(str(row["text"]))
        else:
            texts.append(line)
    if not texts:
        raise AlignmentError(f"{path} holds no calibration text")
    return texts


def _hook_points(spec: ModelSpec) -> dict[str, tuple[Axis, str]]:
    """Module name → (axis kind, whether its "input" or "output" is the activation)."""
    points: dict[str, tuple[Axis, str]] = {"model.embed_tokens": (RESIDUAL, "output")}
    for layer in range(spec.layers):
        p = f"model.layers.{layer}"
        points[p] = (RESIDUAL, "output")
        for kind in ("q", "k", "v"):
            points[f"{p}.self_attn.{kind}_proj"] = ((kind, layer), "output")
        points[f"{p}.self_attn.o_proj"] = (("o", layer), "input")
        points[f"{p}.mlp.down_proj"] = (("mlp", layer), "input")
    return points


def _load(path: Path, device: torch.device) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch.float32, device_map={"": str(device)}
        )
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise AlignmentError(f"cannot load {path} to collect activations: {err}") from err
    return model.eval()


def _activations(model: Any, spec: ModelSpec, ids: torch.Tensor) -> dict[Axis, list[torch.Tensor]]:
    """Every permutation point's activations for one sequence, each ``[tokens, units]``."""
    found: dict[Axis, list[torch.Tensor]] = {}
    modules = dict(model.named_modules())
    handles = []
    for name, (axis, where) in _hook_points(spec).items():

        def hook(_module: Any, args: Any, output: Any, axis: Axis = axis, where: str = where):
            value = args[0] if where == "input" else output
            value = value[0] if isinstance(value, tuple) else value
            found.setdefault(axis, []).append(value.reshape(-1, value.shape[-1]).float().cpu())

        if name not in modules:
            raise AlignmentError(f"the loaded model has no module {name!r}")
        handles.append(modules[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(input_ids=ids.to(next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    return found


def _token_ids(tokenizer_dir: Path, texts: Iterable[str], max_tokens: int) -> list[torch.Tensor]:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except (OSError, ValueError, KeyError) as err:
        raise AlignmentError(f"activation matching needs A's tokenizer: {err}") from err
    out = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :max_tokens]
        if ids.numel():
            out.append(ids)
    if not out:
        raise AlignmentError("the calibration texts tokenize to nothing")
    return out


def activation_matching(
    reference_dir: Path,
    model_dir: Path,
    spec: ModelSpec,
    texts: list[str],
    *,
    device: torch.device,
    max_tokens: int = 256,
) -> tuple[Permutations, dict[str, Any]]:
    """Solve every permutation once from activation cross-moments on ``texts``.

    Returns:
        The permutations, and a summary (tokens used, the summed diagonal of the residual
        cross-moment before and after, as a sanity number).
    """
    sequences = _token_ids(reference_dir, texts, max_tokens)
    model = _load(reference_dir, device)
    stored = [_activations(model, spec, ids) for ids in sequences]
    del model
    model = _load(model_dir, device)
    moments: dict[Axis, torch.Tensor] = {}
    for ids, a_points in zip(sequences, stored, strict=True):
        b_points = _activations(model, spec, ids)
        for axis, a_list in a_points.items():
            for a, b in zip(a_list, b_points[axis], strict=True):
                product = a.T @ b
                moments[axis] = moments[axis] + product if axis in moments else product
    del model
    perms = Permutations.identity(spec)
    perms.residual = assignment(moments[RESIDUAL])
    for layer in range(spec.layers):
        perms.mlp[layer] = assignment(moments[("mlp", layer)])
        matrices = {kind: moments[(kind, layer)] for kind in ("q", "k", "v", "o")}
        perms.attention[layer] = solve_heads(spec, HeadBlocks.from_matrices(spec, matrices))
    residual = moments[RESIDUAL]
    matched = residual[torch.arange(spec.hidden), perms.residual].sum()
    summary = {
        "tokens": int(sum(ids.numel() for ids in sequences)),
        "texts": len(sequences),
        "residual_moment_trace_before": float(residual.trace()),
        "residual_moment_trace_after": float(matched),
    }
    return perms, summary
