"""The app as a Space with ``hf_oauth: true``, rehearsed offline: gradio's real OAuth routes
(authlib) sign in against the demo's local Hub, which plays hf.co's OpenID provider; the user's
OAuth token, never typed into the app, then pushes a merge. Driven by a real headless Chromium.

What differs from a real Space: the provider is the local Hub (its consent page asks for a Hub
token where hf.co would use its own login), ``SPACE_HOST`` is unset so that the callback is
http://127.0.0.1 instead of https://<space>.hf.space, and there is no iframe around the app.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.app.conftest import free_port, start_app, stop_app
from tests.app.test_api import RECIPE, run_merge
from tests.app.test_browser import ARGS, CHROMIUM, tab

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DEMO_TOKEN = "hf_demo_local_token"


@pytest.fixture(scope="module")
def space_app(demo_root, tmp_path_factory):
    data = tmp_path_factory.mktemp("space-data")
    (data / "demo").mkdir()
    (data / "demo" / "models").symlink_to(demo_root / "demo" / "models")
    hub_port = free_port()
    app = start_app(
        data,
        SYSTEM="spaces",
        SPACE_ID="demo/hubmerge",
        OAUTH_CLIENT_ID="hubmerge-space",
        OAUTH_CLIENT_SECRET="space-secret",
        OAUTH_SCOPES="openid profile write-repos manage-repos",
        OPENID_PROVIDER_URL=f"http://127.0.0.1:{hub_port}",
        HUBMERGE_DEMO_HUB_PORT=str(hub_port),
    )
    try:
        yield app
    finally:
        stop_app(app)


def test_sign_in_on_a_space_then_push_with_the_oauth_token(space_app, artifacts):
    sync_api = pytest.importorskip("playwright.sync_api")
    from gradio_client import Client

    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    # a merge to push, started through the API by the demo user (whose token it is), so the
    # same Hub user owns it when signed in with OAuth in the browser
    job_id, record, _ = run_merge(Client(space_app.url, verbose=False), RECIPE, DEMO_TOKEN)
    assert record["state"] == "succeeded"

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1200})
        page.set_default_timeout(60_000)
        page.goto(space_app.url)
        expect = sync_api.expect
        sign_in = page.get_by_role("button", name=re.compile("Sign in with Hugging Face"))
        expect(sign_in).to_be_visible()
        expect(page.locator("#hub-token")).to_be_hidden()  # no token field on Spaces

        # pushing before signing in is refused in plain words
        tab(page, "Push")
        page.locator("#push-merge-job textarea, #push-merge-job input").first.fill(job_id)
        page.locator("#repo-id textarea, #repo-id input").first.fill("demo/space-merge")
        page.locator("#push-btn").click()
        toast = page.locator(".toast-body.error")
        expect(toast).to_contain_text("Sign in with Hugging Face to push")
        expect(toast).to_be_visible()
        page.wait_for_timeout(800)  # let the toast's fly-in transition finish
        page.screenshot(path=str(artifacts / "1-signed-out.png"))

        # sign in: gradio → the Hub's consent page → back with a code → session cookie
        sign_in.click()
        page.wait_for_url(re.compile(r"/oauth/authorize\?"))
        page.locator("#token").fill(DEMO_TOKEN)
        page.screenshot(path=str(artifacts / "2-consent.png"), full_page=True)
        page.locator("#authorize").click()
        page.wait_for_url(re.compile(re.escape(space_app.url)))
        expect(page.get_by_role("button", name=re.compile(r"Logout \(demo\)"))).to_be_visible()

        tab(page, "Push")
        page.locator("#push-merge-job textarea, #push-merge-job input").first.fill(job_id)
        page.locator("#repo-id textarea, #repo-id input").first.fill("demo/space-merge")
        page.locator("#push-btn").click()
        expect(page.locator("#commit-url textarea, #commit-url input").first).to_have_value(
            re.compile("/demo/space-merge/commit/"), timeout=120_000
        )
        page.screenshot(path=str(artifacts / "3-pushed.png"), full_page=True)
        push_id = page.locator("#push-job textarea, #push-job input").first.input_value()
        browser.close()

    # the OAuth access token reached neither the job records nor the log
    status = Client(space_app.url, verbose=False).predict(push_id, DEMO_TOKEN,
                                                          api_name="/job_status")  # fmt: skip
    assert status["state"] == "succeeded"
    assert "hf_oauth_" not in json.dumps(status)
    assert b"hf_oauth_" not in (space_app.data_dir / "jobs.sqlite").read_bytes()
    assert "hf_oauth_" not in space_app.log.read_text()
