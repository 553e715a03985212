"""Load a causal LM and its tokenizer once, with accelerate's big-model placement.

``device="auto"`` fills the GPUs, then CPU memory, then an offload folder on disk, so a
merged model larger than memory still evaluates (slowly). A concrete device (``"cpu"``,
``"cuda:0"``) puts the whole model there, which in-place weight edits (the interpolation
probe) need.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluation.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def resolve_dtype(dtype: str) -> Any:
    """``"auto"`` (the checkpoint's dtype) or a torch dtype name such as ``"bfloat16"``."""
    import torch

    if dtype == "auto":
        return "auto"
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise ModelLoadError(f"unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16', …")
    return resolved


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model; a missing pad token falls back to EOS (in memory only).

    Raises:
        [`ModelLoadError`]: no loadable tokenizer at `path`.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"cannot load a tokenizer from {path}: {err}") from err
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    path: str | Path,
    *,
    device: str = "auto",
    dtype: str = "auto",
    offload_folder: str | Path | None = None,
    trust_remote_code: bool = False,
    max_memory: dict[int | str, int | str] | None = None,
) -> PreTrainedModel:
    """Load a causal LM for inference (eval mode, no gradients).

    Args:
        path (`str` or `Path`): model directory or Hub id.
        device (`str`): ``"auto"`` for accelerate's placement (GPU → CPU → disk), or one
            device for the whole model (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        dtype (`str`): ``"auto"`` keeps the checkpoint's dtype; else a torch dtype name.
        offload_folder (`str` or `Path`, *optional*): where weights that fit nowhere else go
            (default: a folder under the system temp dir).
        trust_remote_code (`bool`): run code shipped with the checkpoint; off by default.
        max_memory (`dict`, *optional*): accelerate's per-device budget with ``"auto"``,
            e.g. ``{0: "20GiB", "cpu": "60GiB"}``; what does not fit goes to disk.

    Raises:
        [`ModelLoadError`]: the checkpoint cannot be loaded.
    """
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype), "trust_remote_code": trust_remote_code}
    if device == "auto":
        folder = offload_folder or Path(tempfile.gettempdir()) / "hubmerge-offload"
        kwargs.update(device_map="auto", offload_folder=str(folder), max_memory=max_memory)
    else:
        kwargs.update(device_map={"": device})
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelLoadError(f"cannot load a causal LM from {path}: {err}") from err
    placement = getattr(model, "hf_device_map", None)
    if placement and {"disk", "cpu"} & set(map(str, placement.values())):
        logger.info("%s placed as %s (offloaded parts run slowly)", path, placement)
    model.eval()
    model.requires_grad_(False)
    return model


def input_device(model: Any) -> Any:
    """Where a model's inputs go: the first device accelerate placed weights on.

    With disk offload `model.device` reports ``meta``; inputs must go to the execution
    device (the first GPU or the CPU) instead.
    """
    import torch

    placement = getattr(model, "hf_device_map", None) or {}
    for where in placement.values():
        if isinstance(where, int):
            return torch.device("cuda", where)
        if where not in ("disk", "meta"):
            return torch.device(where)
    if placement:  # everything on disk: accelerate executes on the first GPU, else the CPU
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    return next(model.parameters()).device
