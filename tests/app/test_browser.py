"""A real headless Chromium clicks through models → method → merge → evaluate → push."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture
def page(running_app):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.set_default_timeout(60_000)
        page.goto(running_app.url)
        yield page
        browser.close()


def pick(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input").first
    box.click()
    box.fill(value)
    page.wait_for_timeout(300)
    box.press("Enter")
    page.wait_for_timeout(300)


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=re.compile(name)).click()


def test_click_through_the_demo(page, artifacts):
    from playwright.sync_api import expect

    # 1. models: base + two fine-tunes, found by typing into the Hub search
    pick(page, "base-model", "demo/tiny-base")
    for model in ("demo/tiny-math", "demo/tiny-animals"):
        pick(page, "model-search", model)
        page.locator("#add-model").click()
        expect(page.locator("#models-table")).to_contain_text(model)
    expect(page.locator("#compat-report")).to_contain_text("mergeable", timeout=60_000)
    page.screenshot(path=str(artifacts / "1-models.png"), full_page=True)

    # 2. method: the recipe YAML follows the form
    tab(page, "Method")
    expect(page.locator("#recipe-yaml")).to_contain_text("base_model: demo/tiny-base")
    expect(page.locator("#recipe-yaml")).to_contain_text("demo/tiny-animals")
    expect(page.locator("#method-info a").first).to_have_attribute("href", re.compile("arxiv"))
    page.screenshot(path=str(artifacts / "2-method.png"), full_page=True)

    # 3. merge: tensors done / total, bytes and ETA while it runs
    tab(page, "Merge")
    page.locator("#merge-btn").click()
    running = re.compile(r"▶ merge: \d+/21 tensors, [\d.]+/[\d.]+ MB(, ETA \d+ s)?$")
    expect(page.locator("#merge-log textarea")).to_have_value(running, timeout=120_000)
    page.screenshot(path=str(artifacts / "3-merge-progress.png"), full_page=True)
    expect(page.locator("#merge-log textarea")).to_have_value(re.compile("wrote 21 tensors"),
                                                              timeout=120_000)  # fmt: skip
    job_id = page.locator("#merge-job textarea, #merge-job input").first.input_value()
    assert job_id.startswith("merge-")
    page.screenshot(path=str(artifacts / "3-merge.png"), full_page=True)

    # 4. try: the merge, the base and each input answer the same prompt, side by side
    tab(page, "Try")
    page.locator("#try-prompt textarea").fill("double 7 is")
    page.locator("#try-btn").click()
    expect(page.locator("#try-out-3 textarea")).to_have_value(re.compile(r"\S"), timeout=120_000)
    expect(page.locator("#try-out-2 textarea")).to_have_value(" 14.")  # tiny-math, stop at "."
    for index, label in enumerate(["merge", "base", "tiny-math", "tiny-animals"]):
        expect(page.locator(f"#try-out-{index}")).to_contain_text(label)
    expect(page.locator("#try-out-4")).to_be_hidden()
    page.screenshot(path=str(artifacts / "4-try.png"), full_page=True)

    # 5. evaluate (the merge job id is carried over): table, bar chart, probe curve
    tab(page, "Evaluate")
    page.locator("#eval-btn").click()
    expect(page.locator("#eval-table")).to_contain_text("hubmerge_demo_math", timeout=180_000)
    expect(page.locator("#eval-chart img")).to_be_visible(timeout=30_000)
    expect(page.locator("#eval-curve canvas, #eval-curve svg").first).to_be_visible(
        timeout=30_000
    )
    page.wait_for_timeout(1000)  # let the plots finish drawing
    page.screenshot(path=str(artifacts / "5-evaluate.png"), full_page=True)

    # 6. push, with a card preview that carries the results
    tab(page, "Push")
    page.locator("#repo-id textarea, #repo-id input").first.fill("demo/browser-merge")
    page.locator("#preview-btn").click()
    expect(page.locator("#card")).to_contain_text("model-index", timeout=30_000)
    expect(page.locator("#card")).to_contain_text("AutoModelForCausalLM")  # the usage snippet
    page.locator("#push-btn").click()
    expect(page.locator("#commit-url textarea, #commit-url input").first).to_have_value(
        re.compile("/demo/browser-merge/commit/"), timeout=120_000
    )
    page.screenshot(path=str(artifacts / "6-push.png"), full_page=True)
    assert len(list(artifacts.glob("*.png"))) == 7
