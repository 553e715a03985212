"""The Try step's ``generate`` endpoint through gradio_client, against the demo app: the
merge, its base and each input answer the same prompt, streamed, greedy by default."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("gradio_client")

pytestmark = pytest.mark.slow

from app.demo import DEFAULT_RECIPE as RECIPE  # noqa: E402
from app.demo import DEMO_TOKEN as TOKEN  # noqa: E402


@pytest.fixture(scope="module")
def merge_job(client) -> str:
    job_id, _log, record = client.predict(RECIPE, TOKEN, "", "loss", api_name="/merge")
    assert record["state"] == "succeeded", record
    return job_id


def test_generate_answers_side_by_side_and_streams(client, merge_job):
    job = client.submit(merge_job, "double 7 is", 6, 0.0, 1.0, "", TOKEN, api_name="/generate")
    while not job.done():
        threading.Event().wait(0.05)
    updates = job.outputs()
    final = updates[-1]
    assert list(final) == ["merge", "base", "tiny-math", "tiny-animals"]
    assert len(updates) > len(final)  # streamed: several updates per model
    assert final["tiny-math"].startswith(" 14.")  # the math fine-tune knows its skill
    assert not final["base"].startswith(" 14.")  # the base answers a neighbour's
    # greedy by default: the same prompt gives the same texts (the models stay loaded)
    again = client.predict(merge_job, "double 7 is", 6, 0.0, 1.0, "", TOKEN, api_name="/generate")
    assert again == final
    stopped = client.predict(merge_job, "double 7 is", 6, 0.0, 1.0, ".", TOKEN,
                             api_name="/generate")  # fmt: skip
    assert stopped["tiny-math"] == " 14."  # up to the stop string only


def test_generate_explains_a_missing_job_or_prompt(client, merge_job):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="No merge job"):
        client.predict("merge-nope", "hi", 4, 0.0, 1.0, "", TOKEN, api_name="/generate")
    with pytest.raises(AppError, match="prompt"):
        client.predict(merge_job, "  ", 4, 0.0, 1.0, "", TOKEN, api_name="/generate")
