"""Light endpoints under load while heavy jobs run (a benchmark, not a timed test).

The app runs on 127.0.0.1 with the demo Hub (``python -m app --demo``). For `--seconds`
(default 60), one merge and one evaluation are kept running (a new one starts when the
previous finishes; merges are slowed by ``HUBMERGE_TENSOR_DELAY`` so that they last), while
`--clients` (default 20) `gradio_client` clients, each its own session, call `job_status`,
`list_jobs`, `search_models` and `check` in a loop. Prints p50 / p95 / max latency per light
endpoint and the error count, then checks that every heavy job finished and its record is
right. Target: p95 under 1 s while heavy jobs run, zero errors.

The clients share this machine's cores with the app, so they are made cheap: the app is plain
``http://127.0.0.1`` (no TLS), and ``ssl_verify=False`` spares gradio_client building a
verifying SSL context (loading the CA bundle, ~80 ms of CPU) for each of its requests.

    python -m benchmarks.app_load [--clients 20] [--seconds 60] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_demo_local_token"
RECIPE = """\
merge_method: task_arithmetic
base_model: demo/tiny-base
models:
  - model: demo/tiny-math
    parameters: {weight: 1.0}
  - model: demo/tiny-animals
    parameters: {weight: 0.5}
"""
LIGHT = ("job_status", "list_jobs", "search_models", "check")


def start_app(data_dir: Path, port: int, tensor_delay: float) -> subprocess.Popen:
    env = {**os.environ, "HUBMERGE_DATA_DIR": str(data_dir), "HUBMERGE_PORT": str(port),
           "HUBMERGE_CONCURRENCY": "2", "HUBMERGE_TENSOR_DELAY": str(tensor_delay),
           "HUBMERGE_MAX_QUEUED": "10", "HF_HOME": str(data_dir / "hf-home"),
           "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    env.pop("HF_ENDPOINT", None)
    log = (data_dir / "app.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "app", "--demo"], cwd=ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}/gradio_api/info"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the app exited:\n{(data_dir / 'app.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("the app did not start in 600 s")


def new_client(url: str):  # type: ignore[no-untyped-def]
    """A gradio_client session (no SSL context: the app is plain http on 127.0.0.1)."""
    from gradio_client import Client

    return Client(url, verbose=False, ssl_verify=False)


def merge(client) -> str:  # type: ignore[no-untyped-def]
    job_id, _log, _record = client.predict(RECIPE, TOKEN, "", "loss", api_name="/merge")
    return job_id


def evaluate(client, merge_id: str) -> str:  # type: ignore[no-untyped-def]
    job_id, *_ = client.predict(merge_id, "demo", "", 20, False, TOKEN, api_name="/evaluate")
    return job_id


def heavy(client, kind: str, first_merge: str, stop: threading.Event, jobs: list) -> None:  # type: ignore[no-untyped-def]
    while not stop.is_set():
        started = time.monotonic()
        try:
            job_id = merge(client) if kind == "merge" else evaluate(client, first_merge)
            jobs.append((kind, job_id, time.monotonic() - started, None))
        except Exception as err:  # counted and reported
            jobs.append((kind, None, time.monotonic() - started, repr(err)[:200]))


def light(url: str, merge_id: str, stop: threading.Event, ready: threading.Barrier,
          times: dict, errors: list) -> None:  # fmt: skip
    client = new_client(url)
    calls = {
        "job_status": lambda: client.predict(merge_id, TOKEN, api_name="/job_status"),
        "list_jobs": lambda: client.predict(20, TOKEN, api_name="/list_jobs"),
        "search_models": lambda: client.predict("tiny", api_name="/search_models"),
        "check": lambda: client.predict(RECIPE, TOKEN, api_name="/check"),
    }
    ready.wait()
    while not stop.is_set():
        for name in LIGHT:
            started = time.perf_counter()
            try:
                calls[name]()
                times[name].append(time.perf_counter() - started)
            except Exception as err:
                errors.append((name, repr(err)[:200]))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux ``/proc``), threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else (values[0] if values else float("nan"))  # fmt: skip


def check_records(client, jobs: list) -> list[str]:  # type: ignore[no-untyped-def]
    problems = []
    for kind, job_id, _seconds, error in jobs:
        if job_id is None:
            problems.append(f"{kind} failed to submit: {error}")
            continue
        record = client.predict(job_id, TOKEN, api_name="/job_status")
        if record["state"] != "succeeded":
            problems.append(f"{job_id}: {record['state']} {record.get('error')}")
        elif kind == "merge" and (
            record["result"]["tensors"] != 21 or not Path(record["output"], "config.json").is_file()
        ):
            problems.append(f"{job_id}: wrong merge record {record['result']}")  # fmt: skip
        elif kind == "evaluate" and "hubmerge_demo" not in record["result"]["table"]:
            problems.append(f"{job_id}: no demo task in the table")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--tensor-delay", type=float, default=0.5, help="seconds per tensor")
    parser.add_argument("--data-dir", type=Path, help="reuse a data dir (demo models cached)")
    parser.add_argument("--port", type=int, default=7871)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--no-heavy", action="store_true", help="baseline: light calls only")
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="hubmerge-load-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    process = start_app(data_dir, args.port, args.tensor_delay)
    url = f"http://127.0.0.1:{args.port}"
    try:
        control = new_client(url)
        first = merge(control)  # a finished merge to evaluate and to poll
        stop, jobs = threading.Event(), []
        times: dict[str, list[float]] = defaultdict(list)
        errors: list[tuple[str, str]] = []
        ready = threading.Barrier(args.clients + 1)
        workers = [threading.Thread(target=light, args=(url, first, stop, ready, times, errors))
                   for _ in range(args.clients)]  # fmt: skip
        for worker in workers:
            worker.start()
        ready.wait()  # every client is connected: the window starts
        window = (time.monotonic(), cpu_seconds(process.pid), time.process_time())
        heavies = [threading.Thread(target=heavy, args=(new_client(url), kind, first, stop, jobs))
                   for kind in ("merge", "evaluate") if not args.no_heavy]  # fmt: skip
        for thread in heavies:
            thread.start()
        time.sleep(args.seconds)
        stop.set()
        elapsed = time.monotonic() - window[0]
        app_cpu = cpu_seconds(process.pid) - window[1]
        client_cpu = time.process_time() - window[2]
        for thread in workers + heavies:
            thread.join(timeout=600)
        problems = check_records(control, jobs)
    finally:
        process.terminate()
        process.wait(timeout=30)
    rows = []
    print(f"\n{args.clients} clients, {args.seconds:.0f} s, heavy jobs: "
          f"{sum(k == 'merge' for k, *_ in jobs)} merges, "
          f"{sum(k == 'evaluate' for k, *_ in jobs)} evaluations\n")  # fmt: skip
    print("| endpoint | calls | p50 (s) | p95 (s) | max (s) | errors |")
    print("|---|---|---|---|---|---|")
    for name in LIGHT:
        values = times[name]
        count = sum(1 for e in errors if e[0] == name)
        row = {"endpoint": name, "calls": len(values), "p50": percentile(values, 50),
               "p95": percentile(values, 95), "max": max(values, default=float("nan")),
               "errors": count}  # fmt: skip
        rows.append(row)
        print(f"| `{name}` | {row['calls']} | {row['p50']:.3f} | {row['p95']:.3f} | "
              f"{row['max']:.3f} | {count} |")  # fmt: skip
    calls = sum(len(times[name]) for name in LIGHT)
    print(
        f"\napp process: {app_cpu:.1f} CPU s in {elapsed:.0f} s ({app_cpu / elapsed:.0%} of one "
        f"core), {1000 * app_cpu / max(calls, 1):.0f} ms per light call (heavy jobs included); "
        f"clients' process: {client_cpu:.1f} CPU s; load average {os.getloadavg()[0]:.1f}"
    )
    for name, error in errors[:5]:
        print(f"error in {name}: {error}")
    print("\nheavy jobs:", problems or "all finished with the right records")
    if args.json:
        cpu = {"app_cpu_s": app_cpu, "client_cpu_s": client_cpu, "seconds": elapsed}
        args.json.write_text(json.dumps({"rows": rows, "jobs": jobs, "problems": problems,
                                         "cpu": cpu}, indent=2, default=str))  # fmt: skip


if __name__ == "__main__":
    main()
