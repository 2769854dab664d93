"""The playground page in headless Chromium: chat, compare two versions, feedback, preference pairs."""

import shutil
import socket
import urllib.request

import pytest
from ray import serve
from transformers import AutoConfig

from rl.preferences import PreferencePair, read_preference_pairs
from runtime.core.config import load_config
from runtime.model.build import init_model
from runtime.model.versions import link_base, save_version
from serve.playground import start

pytestmark = pytest.mark.e2e
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@pytest.fixture
def playground(ray_cluster, tiny_model, tmp_path):
    run = tmp_path / "run"
    link_base(run, tiny_model)
    save_version(run, 1, init_model(AutoConfig.from_pretrained(tiny_model), seed=5).state_dict(), tiny_model)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load_config("default", [f"model.path={tiny_model}", "experiment.name=test-browser",
                                  f"experiment.run_dir={run}", f"playground.port={port}"])
    serve.shutdown()
    url = start(cfg, run, name="test-browser")
    yield url
    serve.shutdown()


def test_chat_compare_and_feedback_in_a_browser(playground, tmp_path):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "chromium not found: scripts/setup-browser installs Debian's package"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS, chromium_sandbox=False)
        page = browser.new_page()
        page.goto(playground)
        page.wait_for_function("document.querySelectorAll('#model-a option').length === 3")
        page.select_option("#model-a", "v0")
        page.fill("#temperature", "0")
        page.fill("#prompt", "12 + 7 =")
        page.click("#send")
        page.wait_for_function("document.getElementById('status').textContent === 'done'", timeout=120_000)
        single = page.text_content("#answer-a")
        assert single and single != "…" and not single.startswith("error")
        meta = page.text_content("#meta-a")
        assert "v0 answered with version v0" in meta and "tok/s" in meta and "temperature 0" in meta

        page.check("#compare")
        page.select_option("#model-b", "v1")
        page.click("#send")
        page.wait_for_function("document.getElementById('status').textContent === 'done'", timeout=120_000)
        left, right = page.text_content("#answer-a"), page.text_content("#answer-b")
        assert left == single, "greedy answers of one version repeat"
        assert "v1 answered with version v1" in page.text_content("#meta-b") and right

        page.fill("#comment-a", "this one is better")
        page.click("#up-a")
        page.wait_for_function("document.getElementById('fb-a').textContent === 'recorded up'")
        page.click("#down-b")
        page.wait_for_function("document.getElementById('fb-b').textContent === 'recorded down'")
        browser.close()

    exported = tmp_path / "pairs.jsonl"
    exported.write_bytes(urllib.request.urlopen(f"{playground}feedback/pairs.jsonl", timeout=30).read())
    assert read_preference_pairs(exported) == [PreferencePair("12 + 7 =", left, right)]
