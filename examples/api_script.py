"""Merge, evaluate and push with hubmerge's API (gradio_client), end to end.

Start the app first, e.g. the offline demo:  hubmerge serve --demo
Then:  python examples/api_script.py --url http://127.0.0.1:7860 --token hf_demo_local_token

Against the real Hub, pass your own token (never commit it) and real model ids.
"""

from __future__ import annotations

import argparse
import time

from gradio_client import Client

RECIPE = """\
merge_method: task_arithmetic
base_model: demo/tiny-base
models:
  - model: demo/tiny-math
    parameters: {weight: 1.0}
  - model: demo/tiny-animals
    parameters: {weight: 0.5}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--token", required=True, help="a Hub token with write access")
    parser.add_argument("--repo-id", default="demo/api-script-merge")
    args = parser.parse_args()
    client = Client(args.url, verbose=False)

    print([hit["id"] for hit in client.predict("tiny", api_name="/search_models")])
    print(client.predict(RECIPE, args.token, api_name="/check"))  # headers only

    # a generator endpoint: submit() streams status updates with progress
    job = client.submit(RECIPE, args.token, "", "loss", api_name="/merge")
    while not job.done():
        status = job.status()
        for unit in status.progress_data or []:
            print(f"  {unit.desc}")
        time.sleep(0.5)
    merge_id, _log, record = job.result()
    print(f"merge {merge_id}: {record['state']} → {record['output']}")

    # or fire and poll by job id; job endpoints take your token last (your jobs only)
    print(client.predict(merge_id, args.token, api_name="/job_status")["state"])
    print(client.predict(5, args.token, api_name="/list_jobs")["data"])

    _eval_id, table, _plot, _ = client.predict(
        merge_id, "demo", "", 10, False, args.token, api_name="/evaluate"
    )
    print(table)
    print(client.predict(merge_id, args.token, api_name="/card_preview")[:400])

    _push_id, commit_url, _ = client.predict(
        merge_id, args.repo_id, True, True, args.token, api_name="/push"
    )
    print(f"pushed: {commit_url}")


if __name__ == "__main__":
    main()
