"""Merge speed and memory: hubmerge vs mergekit vs a raw read/write lower bound.

Builds Llama-shaped bf16 checkpoints (a base and N perturbed "fine-tunes", random weights
written directly, no downloads), then runs each method as a separate process, paired and
repeated, and prints medians of wall time, CPU time, peak RSS (anonymous and file-mapped
pages sampled separately), input GB/s, each run against the bare read/write bound measured in
the same repeat (`bare_copy.py`), and ratios to mergekit and to another hubmerge checkout.
The table ends with the command that produced it.

Every run starts from the same memory state: the previous run's output is deleted and the
script waits ``--settle`` seconds (default 3) before the next one. On a VM whose guest hands
freed pages back to its host (virtio-balloon free page reporting, ~2 s after they are freed),
writing into pages freed less than ~1 s earlier is far cheaper than writing into any others:
on the 2-core VM of the README, the bound's 2.2 GB write took 0.8 s right after the previous
output was deleted and 2.5–4 s three seconds later. Without the wait, the bound (which writes
at once) gets the cheap pages and a merge (which writes after ~1.5 s of imports) does not.

Usage:
    python benchmarks/merge_speed.py --sizes 0.25B,1B --repeats 3 \
        [--mergekit /path/to/venv/bin/mergekit-yaml] [--baseline /path/to/old/checkout] \
        [--work /tmp/hubmerge-bench] [--out /dev/shm/hm-out]

Not a test: nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

SHAPES = {
    # name: (hidden, intermediate, layers, vocab)
    "0.25B": (1024, 2816, 16, 32000),
    "1B": (2048, 5632, 22, 32000),
}
CHECKOUT = Path(__file__).resolve().parents[1]  # the hubmerge this script belongs to
METHODS = {
    "task_arithmetic": {},
    "ties": {"density": 0.5},
    "dare_ties": {"density": 0.5},
    "linear": {},
}
# The methods added for mergekit parity (issue 11), run with --methods: their per-model
# parameters, their global ones, and which models each takes.
MERGEKIT_METHODS: dict[str, dict[str, float]] = {
    "della": {"density": 0.5}, "della_linear": {"density": 0.5}, "sce": {}, "nuslerp": {},
    "multislerp": {}, "karcher": {}, "nearswap": {}, "arcee_fusion": {}, "ram": {},
    "ramplus_tl": {},
}  # fmt: skip
GLOBAL_PARAMETERS = {"sce": {"select_topk": 0.5}, "nearswap": {"t": 0.0005}}
WITHOUT_BASE = {"linear", "multislerp", "karcher", "nuslerp"}  # the base is listed as a model
TWO_MODELS = {"nuslerp", "nearswap", "arcee_fusion"}  # exactly two, counting the base
UNWEIGHTED = {"sce", "karcher", "nearswap", "arcee_fusion", "ram", "ramplus_tl"}
# The slice plan (issue 11), run with --methods: a depth up-scaling frankenmerge (the base's
# first 3/4 of the layers, then the first fine-tune's last 3/4: 1.5x the layers) and the
# LazyMergekit SLERP template, which is written with slices.
SLICE_PLANS = ("passthrough_slices", "slerp_slices")


def llama_tensors(hidden: int, inter: int, layers: int, vocab: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    kv = hidden // 4
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.v_proj.weight": (kv, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        }
    shapes |= {"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    return shapes


def build_checkpoint(path: Path, size: str, seed: int, base: Path | None) -> None:
    """Write a bf16 checkpoint in 2 GB shards; a fine-tune is base + small seeded noise."""
    from safetensors.torch import load_file, save_file

    if (path / "config.json").exists():
        return
    hidden, inter, layers, vocab = SHAPES[size]
    shapes = llama_tensors(hidden, inter, layers, vocab)
    gen = torch.Generator().manual_seed(seed)
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    base_tensors = {}
    if base is not None:
        for f in sorted(base.glob("*.safetensors")):
            base_tensors |= load_file(f)
    shard: dict[str, torch.Tensor] = {}
    weight_map: dict[str, str] = {}
    files: list[str] = []

    def flush() -> None:
        name = f"part-{len(files)}.safetensors"
        save_file(shard, tmp / name, metadata={"format": "pt"})
        files.append(name)
        weight_map.update({k: name for k in shard})
        shard.clear()

    size_bytes = 0
    for name, shape in shapes.items():
        if base is None:
            t = torch.randn(shape, generator=gen) * 0.02
        else:
            t = base_tensors[name].float() + torch.randn(shape, generator=gen) * 0.002
        shard[name] = t.to(torch.bfloat16)
        size_bytes += shard[name].numel() * 2
        if size_bytes > 2_000_000_000:
            flush()
            size_bytes = 0
    if shard:
        flush()
    n = len(files)
    renamed = {f: f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i, f in enumerate(files)}
    for old, new in renamed.items():
        (tmp / old).rename(tmp / new)
    index = {"metadata": {}, "weight_map": {k: renamed[v] for k, v in weight_map.items()}}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 16,
        "num_key_value_heads": 4, "vocab_size": vocab, "torch_dtype": "bfloat16",
        "rms_norm_eps": 1e-5, "max_position_embeddings": 2048, "tie_word_embeddings": False,
    }  # fmt: skip
    (tmp / "config.json").write_text(json.dumps(config))
    tmp.rename(path)


def slice_recipe_yaml(method: str, base: Path, inputs: list[Path]) -> str:
    layers = json.loads((base / "config.json").read_text())["num_hidden_layers"]
    cut = layers - layers // 4
    if method == "passthrough_slices":
        return (
            "merge_method: passthrough\nslices:\n"
            f"  - sources: [{{model: {base}, layer_range: [0, {cut}]}}]\n"
            f"  - sources: [{{model: {inputs[0]}, layer_range: [{layers - cut}, {layers}]}}]\n"
            "dtype: bfloat16\n"
        )
    return (
        f"merge_method: slerp\nbase_model: {base}\nslices:\n  - sources:\n"
        f"      - {{model: {base}, layer_range: [0, {layers}]}}\n"
        f"      - {{model: {inputs[0]}, layer_range: [0, {layers}]}}\n"
        "parameters:\n  t:\n    - {filter: self_attn, value: [0, 0.5, 0.3, 0.7, 1]}\n"
        "    - {filter: mlp, value: [1, 0.5, 0.7, 0.3, 0]}\n    - {value: 0.5}\n"
        "dtype: bfloat16\n"
    )


def recipe_yaml(method: str, base: Path, inputs: list[Path]) -> str:
    if method in SLICE_PLANS:
        return slice_recipe_yaml(method, base, inputs)
    params = {**METHODS, **MERGEKIT_METHODS}[method]
    inputs = inputs[:1] if method in TWO_MODELS else inputs
    if method in WITHOUT_BASE:  # e.g. linear: a soup of every model, a weight for each
        lines = [f"merge_method: {method}", "models:"]
        inputs = [base, *inputs]
    else:
        lines = [f"merge_method: {method}", f"base_model: {base}", "models:"]
    for p in inputs:
        extra = "".join(f", {k}: {v}" for k, v in params.items())
        if method in UNWEIGHTED:
            lines.append(f"  - model: {p}")
            continue
        lines.append(f"  - model: {p}\n    parameters: {{weight: {1 / len(inputs):.4f}{extra}}}")
    if method in GLOBAL_PARAMETERS:
        values = ", ".join(f"{k}: {v}" for k, v in GLOBAL_PARAMETERS[method].items())
        lines.append(f"parameters: {{{values}}}")
    lines.append("dtype: bfloat16")
    return "\n".join(lines) + "\n"


def _sample_memory(pid: int, peak: dict[str, int], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            break
        values = {}
        for line in status.splitlines():
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmRSS"):
                values[key] = int(rest.split()[0]) * 1024
        for key, value in values.items():
            peak[key] = max(peak.get(key, 0), value)
        stop.wait(0.05)


def run_measured(cmd: list[str], checkout: Path | None = None) -> dict[str, float]:
    """Run a command (from ``checkout``: its working directory and PYTHONPATH); wall and CPU
    seconds, peak anonymous / file-mapped / total RSS."""
    env = None if checkout is None else {**os.environ, "PYTHONPATH": str(checkout)}
    before = os.times()
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, cwd=checkout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    peak: dict[str, int] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_memory, args=(proc.pid, peak, stop))
    sampler.start()
    _, err = proc.communicate()
    stop.set()
    sampler.join()
    wall = time.perf_counter() - start
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed:\n{err.decode()[-2000:]}")
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    # hubmerge logs its own merge time (after the interpreter started and imported torch)
    logged = re.search(rb"merged \d+ tensors into .* in ([0-9.]+) s", err)
    return {
        "wall": wall,
        "merge": float(logged.group(1)) if logged else float("nan"),
        "cpu": cpu,
        "rss_gb": peak.get("VmRSS", 0) / 1e9,
        "anon_gb": peak.get("RssAnon", 0) / 1e9,
        "file_gb": peak.get("RssFile", 0) / 1e9,
    }


def input_bytes(paths: list[Path]) -> int:
    return sum(f.stat().st_size for p in paths for f in p.glob("*.safetensors"))


def tools_for(recipe: Path, args: argparse.Namespace) -> dict[str, tuple[list[str], Path | None]]:
    """The commands compared on one recipe (each gets the output folder appended), with the
    checkout each hubmerge runs from (its working directory and PYTHONPATH)."""
    merge = [sys.executable, "-m", "app.cli", "merge", str(recipe), "-o"]
    tools: dict[str, tuple[list[str], Path | None]] = {"hubmerge": (merge, CHECKOUT)}
    if args.baseline:  # another checkout of hubmerge, e.g. `git archive <rev> | tar -x -C DIR`
        tools["baseline"] = (merge, args.baseline.resolve())
    if args.mergekit:
        tools["mergekit"] = ([args.mergekit, str(recipe), "--no-copy-tokenizer"], None)
    return tools


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="0.25B,1B")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--inputs", type=int, default=2, help="fine-tunes besides the base")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mergekit", help="path to mergekit-yaml (e.g. in its own venv)")
    parser.add_argument("--baseline", type=Path, help="another hubmerge checkout to compare")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hm-bench")
    parser.add_argument("--out", type=Path, help="where outputs are written (default: --work)")
    parser.add_argument(
        "--settle", type=float, default=3.0, help="seconds from deleting an output to the next run"
    )
    args = parser.parse_args()
    args.work = args.work.resolve()  # the tools run from their own checkouts
    args.out = args.out.resolve() if args.out else None
    command = " ".join(["python", "benchmarks/merge_speed.py", *sys.argv[1:]])
    rows: list[dict[str, Any]] = []
    for size in args.sizes.split(","):
        root = args.work / size
        base = root / "base"
        build_checkpoint(base, size, 0, None)
        inputs = [root / f"ft{i}" for i in range(1, args.inputs + 1)]
        for i, p in enumerate(inputs, start=1):
            build_checkpoint(p, size, i, base)
        total_in = input_bytes([base, *inputs])
        out_root = args.out or root
        jobs: list[tuple[str, str, list[str], Path | None]] = []
        bare = Path(__file__).with_name("bare_copy.py")
        for method in args.methods.split(","):
            recipe = root / f"{method}.yaml"
            recipe.write_text(recipe_yaml(method, base, inputs))
            # the bound is the same for every method (run once per repeat), but a slice plan
            # writes another number of layers: it gets a bound of its own
            bound = method if method in SLICE_PLANS else "(all)"
            if not any(job[:2] == (bound, "bare") for job in jobs):
                jobs.append((bound, "bare", [sys.executable, str(bare), str(recipe)], None))
            for tool, (cmd, checkout) in tools_for(recipe, args).items():
                jobs.append((method, tool, cmd, checkout))
        samples: dict[tuple[str, str], list[dict[str, float]]] = {}
        for repeat in range(args.repeats):
            # paired: each repeat runs every job once, in alternating order
            for method, tool, cmd, checkout in jobs if repeat % 2 == 0 else jobs[::-1]:
                out = out_root / f"out-{method}-{tool}"
                shutil.rmtree(out, ignore_errors=True)
                time.sleep(args.settle)  # the same memory state for every run (module docstring)
                run = run_measured([*cmd, str(out)], checkout)
                shutil.rmtree(out, ignore_errors=True)
                samples.setdefault((method, tool), []).append(run)
                print(json.dumps({"size": size, "method": method, "tool": tool, **run}),
                      file=sys.stderr, flush=True)  # fmt: skip
        for (method, tool), runs in samples.items():
            bare_runs = samples[(method if method in SLICE_PLANS else "(all)", "bare")]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            med["gbps"] = total_in / 1e9 / med["wall"]
            # paired ratios: each run against the bound measured in the same repeat
            med["x_bare"] = statistics.median(
                r["wall"] / b["wall"] for r, b in zip(runs, bare_runs, strict=True)
            )
            med["x_bare_merge"] = statistics.median(
                r["merge"] / b["wall"] for r, b in zip(runs, bare_runs, strict=True)
            )
            rows.append({"size": size, "method": method, "tool": tool, **med})
    print_table(rows, command, args.repeats, args.settle)


def print_table(rows: list[dict[str, Any]], command: str, repeats: int, settle: float) -> None:
    print(f"\nCommand: {command}")
    print(f"Medians of {repeats} paired repeats, each run {settle:g} s after the last output was "
          "deleted; x bare = median of per-repeat wall / bare wall.\n")  # fmt: skip
    print("merge s: the merge itself as hubmerge logs it (wall s less the interpreter's start and "
          "imports).\n")  # fmt: skip
    print("| size | method | tool | wall s | merge s | CPU s | x bare | merge x bare | peak RSS GB "
          "| anon GB | file GB | in GB/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        logged = r["merge"] == r["merge"]  # NaN: not logged (the bound, mergekit)
        merge = f"{r['merge']:.1f}" if logged else ""
        ratio = f"{r['x_bare_merge']:.2f}x" if logged else ""
        print(
            f"| {r['size']} | {r['method']} | {r['tool']} | {r['wall']:.1f} | {merge} | "
            f"{r['cpu']:.1f} | {r['x_bare']:.2f}x | {ratio} | {r['rss_gb']:.2f} | "
            f"{r['anon_gb']:.2f} | {r['file_gb']:.2f} | {r['gbps']:.2f} |"
        )
    by_key = {(r["size"], r["method"], r["tool"]): r for r in rows}
    tools = sorted({r["tool"] for r in rows} - {"bare", "hubmerge"})
    print("\n| size | method | hubmerge / bare | " + " | ".join(
        f"{t} / hubmerge" for t in tools) + " |")  # fmt: skip
    print("|---|---|---|" + "---|" * len(tools))
    for (size, method, tool), r in by_key.items():
        if tool != "hubmerge":
            continue
        cells = []
        for other in tools:
            o = by_key.get((size, method, other))
            cells.append(f"{o['wall'] / r['wall']:.2f}x" if o else "n/a")
        print(f"| {size} | {method} | {r['x_bare']:.2f}x | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
