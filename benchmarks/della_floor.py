"""Where DELLA's time goes, stage by stage, on one real tensor: ns per element, single thread.

DELLA ranks every task-vector entry by magnitude within its row (exact, stable ranks), draws a
16-bit number per entry, keeps it below a rank-dependent threshold, and rescales by the
tensor's L1 norms, which are known only once every row is done: a reduction pass, then an
output pass. This prints each stage of the compiled path as the merge runs it, and two floors
no exact-rank method on this machine gets under:

- ``histogram``: one count per element into the row's buckets (those the ranking uses, in L1
  cache): a counting rank needs at least this, a sort more;
- ``copy``: a bf16 tensor copied (2 bytes read, 2 written per element): the memory rate.

``reduction`` is `observe_rows` (draws, |δ|, ranked keep mask, L1 sums; per model), ``apply``
the output pass (`family_apply`: both models' masked, sign-elected mean, bf16 out). The last
lines scale them to CPU seconds for the whole model given (``--model``'s parameter count, two
fine-tunes; 10⁹ with ``--synthetic``), to compare with `merge_profile.py`'s ``reduce.0`` and
``apply``.

Usage: python benchmarks/della_floor.py --model BASE --finetune FT [--tensor NAME]
       python benchmarks/della_floor.py --synthetic

Not a test: nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch
from safetensors import safe_open

from merging.methods import _compiled, _della_fused, _jit_dare, _jit_della, _jit_della_rows
from merging.methods._jit_loops import RAWS_PER_BLOCK, _pcg_raws
from merging.methods._ops import RandomStream
from merging.methods._streams import block_streams

TENSOR = "model.layers.3.mlp.down_proj.weight"
CHUNK = 1 << 18


@numba.njit(cache=True)
def _histogram(keys: Any, cols: int, counts: Any) -> int:
    """One count per element into the buckets `_jit_della.keep_row` uses for such rows (the
    row's top 8 binades, about one bucket per four elements), row by row."""
    seen = 0
    bins = max(_jit_della.EVEN_BINS, (1 << _jit_della.bins_log2(cols)) >> 1)
    for row in range(keys.size // cols):
        row_keys = keys[row * cols : (row + 1) * cols]
        top, bottom = _jit_della.extremes(row_keys)
        floor = top - _jit_della.SPAN if top - bottom > _jit_della.SPAN else bottom
        shift = np.uint32(0)
        while ((top - floor) >> shift) >= np.uint32(bins):
            shift += np.uint32(1)
        counts[:bins] = 0
        for j in range(cols):
            k = row_keys[j]
            counts[np.uint32(k - floor) >> shift if k > floor else np.uint32(0)] += 1
        seen += counts[0]
    return seen


def _load(folder: Path, name: str) -> torch.Tensor:
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            if name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                return f.get_tensor(name)
    raise SystemExit(f"{folder} has no tensor {name}")


def _params(folder: Path) -> int:
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            total += sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())  # noqa: SIM118
    return total


def _timed(fn: Callable[[], Any], elements: int, repeats: int = 5) -> float:
    fn()  # (compiled, pages touched)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / elements * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="the base model folder")
    parser.add_argument("--finetune", type=Path, help="a fine-tune of it")
    parser.add_argument("--tensor", default=TENSOR)
    parser.add_argument("--synthetic", action="store_true", help="a seeded 2048x5632 pair")
    args = parser.parse_args()
    if args.synthetic:
        gen = torch.Generator().manual_seed(0)
        base = (torch.randn(2048, 5632, generator=gen) * 0.02).to(torch.bfloat16)
        tuned = (base.float() + torch.randn(base.shape, generator=gen) * 4e-4).to(torch.bfloat16)
        total = 10**9
    elif args.model and args.finetune:
        base, tuned = _load(args.model, args.tensor), _load(args.finetune, args.tensor)
        total = _params(args.model)
    else:
        parser.error("give --model and --finetune, or --synthetic")
    rows, cols = base.shape
    n = base.numel()
    flat_base, flat_tuned = base.reshape(-1), tuned.reshape(-1)
    b, x = _compiled.as_array(flat_base), _compiled.as_array(flat_tuned)
    keys = _della_fused.DellaKeys(RandomStream(0, args.tensor))
    states, incs = block_streams(keys, 0, 0, n, _jit_dare.seed_streams)
    raws = np.empty(states.shape[0] * RAWS_PER_BLOCK, np.uint64)
    row_keys, work = np.empty(cols, np.uint32), _jit_della.scratch(cols)
    ranks = np.arange(cols) / max(cols - 1, 1)
    table = np.round((0.35 + 0.3 * ranks) * 65536).astype(np.int32)  # density 0.5, ε 0.15
    keep = np.empty(n, np.bool_)
    all_keys = np.empty(n, np.uint32)
    for row in range(rows):
        _jit_della_rows._keys(x[row * cols : (row + 1) * cols], b[row * cols : (row + 1) * cols],
                              all_keys[row * cols : (row + 1) * cols])  # fmt: skip

    def draws() -> None:
        for block in range(states.shape[0]):
            lanes = states[block].copy()
            _pcg_raws(
                lanes, incs[block], raws[block * RAWS_PER_BLOCK : (block + 1) * RAWS_PER_BLOCK]
            )

    def reduction() -> None:
        _jit_della_rows.observe_rows(b, x, cols, states.copy(), incs, 0, table, keep, raws,
                                     row_keys, work)  # fmt: skip

    counts = np.zeros(1 << 13, np.int32)
    out = torch.empty(n, dtype=torch.bfloat16)
    other = np.random.default_rng(1).random(n) < 0.5

    def apply() -> None:
        for offset in range(0, n, CHUNK):
            part = slice(offset, min(n, offset + CHUNK))
            _compiled.family_apply(
                flat_base[part], [flat_tuned[part], flat_tuned[part]],
                modes=[_compiled.MASK] * 2, thresholds=[0.0, 0.0],
                keeps=[keep[part], other[part]], rescales=[_compiled.RESCALE_MUL] * 2,
                scales=[1.3, 1.2], weights=[0.5, 0.5], divisor_weights=[1.0, 1.0],
                sign_method="sum", normalize=True, lambda_=1.0, out=out[part],
            )  # fmt: skip

    _compiled.LOOPS.ready((base.dtype, base.dtype, 2), wait=True)
    _della_fused.LOOPS.ready(wait=True)
    torch.set_num_threads(1)
    copy_out = torch.empty_like(flat_base)
    figures = {
        "draws": _timed(draws, n),
        "histogram (floor)": _timed(lambda: _histogram(all_keys, cols, counts), n),
        "reduction": _timed(reduction, n),
        "apply": _timed(apply, n),
        "copy (floor)": _timed(lambda: copy_out.copy_(flat_base), n),
    }
    print(f"tensor {args.tensor} {rows}x{cols}; ns per element, one thread:")
    for name, value in figures.items():
        print(f"  {name:18s} {value:6.2f}")
    reduce_s = figures["reduction"] * 2 * total / 1e9
    apply_s = figures["apply"] * total / 1e9
    print(f"at {total / 1e9:.2f}B parameters, two fine-tunes: reduction {reduce_s:.1f} CPU s, "
          f"apply {apply_s:.1f} CPU s; histogram floor alone "
          f"{figures['histogram (floor)'] * 2 * total / 1e9:.1f} CPU s")  # fmt: skip
    print(json.dumps({k.split(" ")[0]: round(v, 3) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
