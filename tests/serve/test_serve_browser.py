"""Every page in headless Chromium (Selenium + the Debian `chromium` / `chromium-driver` packages) against a
live server with tiny models: it loads, does its job, shows the result. Screenshots: test-artifacts/serve/."""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from gensys.metrics.events import EventLog

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "serve"

pytestmark = pytest.mark.skipif(
    not (Path(CHROMEDRIVER).exists() and Path(CHROMIUM).exists()),
    reason="needs the Debian packages chromium and chromium-driver (apt-get install chromium-driver)",
)


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="gensys-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-extensions", "--window-size=1200,900", f"--user-data-dir={profile}",
    ):  # fmt: skip
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(autouse=True)
def _fresh_console(browser):
    browser.get_log("browser")  # drain: each test checks only its own console messages


def wait_for(condition, timeout: float = 90.0, what: str = "condition"):
    """Poll `condition()` until it returns something truthy (the page talks to a slow CPU model)."""
    deadline = time.time() + timeout
    last_error = None
    while time.time() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - element not there yet
            last_error = e
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} ({last_error})")


def by_css(driver, css: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def shot(driver, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def no_console_errors(driver) -> None:
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def events(serve_config, system: str, event: str) -> list:
    with EventLog(serve_config.events_path()) as log:
        return log.events(system=system, event=event)


def test_index_lists_every_system(browser, live_server):
    browser.get(live_server.url + "/")
    items = wait_for(lambda: by_css(browser, "#systems li.card"), what="the system list")
    assert len(items) == 5
    assert all(b.text == "ready" for b in by_css(browser, "#systems .badge"))
    links = [a.get_attribute("href") for a in by_css(browser, "#systems a")]
    assert links == [f"{live_server.url}/{s}" for s in ("compose", "translate", "chat", "caption", "rag")]
    shot(browser, "index")
    no_console_errors(browser)


def test_compose_ghost_text_and_tab(browser, live_server, serve_config):
    from selenium.webdriver.common.keys import Keys

    browser.get(live_server.url + "/compose")
    by_css(browser, "#subject")[0].send_keys("Q3 budget")
    body = by_css(browser, "#body")[0]
    typed = "Thanks for the update. Please let me "
    body.send_keys(typed)
    ghost = wait_for(lambda: by_css(browser, "#ghost")[0].text, what="ghost text")
    shot(browser, "compose")
    before = len(events(serve_config, "compose", "accept"))
    body.send_keys(Keys.TAB)
    value = wait_for(lambda: body.get_attribute("value") if body.get_attribute("value") != typed else "")
    assert value == typed + ghost
    wait_for(lambda: len(events(serve_config, "compose", "accept")) > before, what="the accept event")
    no_console_errors(browser)


def test_translate_shows_translations_with_scores(browser, live_server, serve_config):
    browser.get(live_server.url + "/translate")
    wait_for(lambda: "en → de" in by_css(browser, "#pair")[0].text, what="the language pair")
    by_css(browser, "#src")[0].send_keys("A man is riding a bicycle.\nTwo dogs play.")
    by_css(browser, "#go")[0].click()
    cards = wait_for(lambda: by_css(browser, ".translation"), what="translations")
    assert len(cards) == 2
    assert by_css(browser, ".translation .score")[0].text.startswith("score -")
    shot(browser, "translate")
    before = len(events(serve_config, "translate", "copy"))
    by_css(browser, ".translation button")[0].click()
    wait_for(lambda: len(events(serve_config, "translate", "copy")) > before, what="the copy event")
    no_console_errors(browser)


def test_chat_streams_a_reply_and_takes_feedback(browser, live_server, serve_config, registry):
    browser.get(live_server.url + "/chat")
    temp = by_css(browser, "#temp")[0]
    temp.clear()
    temp.send_keys("0")
    by_css(browser, "#input")[0].send_keys("hello")
    by_css(browser, "#send")[0].click()
    wait_for(lambda: by_css(browser, ".msg.assistant .thumbs_up"), what="the finished reply")
    reply = by_css(browser, ".msg.assistant .text")[0].text
    expected = registry["chat"].predictor.pipeline.complete(
        [{"role": "user", "content": "hello"}], params={"temperature": 0, "max_tokens": 128}
    )["text"]
    assert reply == expected.strip()
    assert "hidden" in by_css(browser, ".msg.assistant .notice")[0].get_attribute("class")  # not refused
    assert by_css(browser, "#list button.active")[0].text == "hello"  # the session is listed
    shot(browser, "chat")
    before = len(events(serve_config, "chat", "thumbs_up"))
    by_css(browser, ".msg.assistant .thumbs_up")[0].click()
    wait_for(lambda: len(events(serve_config, "chat", "thumbs_up")) > before, what="the thumbs-up event")
    # a second chat is a new session; the first stays in the list
    by_css(browser, "#new")[0].click()
    assert len(by_css(browser, "#list button")) == 2 and not by_css(browser, ".msg")
    no_console_errors(browser)


def test_caption_upload_shows_scored_captions(browser, live_server, tmp_path):
    path = tmp_path / "red.png"
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (210, 40, 40)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    browser.get(live_server.url + "/caption")
    by_css(browser, "#file")[0].send_keys(str(path))
    wait_for(lambda: by_css(browser, "#go")[0].is_enabled(), what="the enabled button")
    by_css(browser, "#go")[0].click()
    rows = wait_for(lambda: by_css(browser, "table.captions tr"), what="captions")
    assert 1 <= len(rows) <= 3
    assert "64×48" in by_css(browser, "#out .muted")[0].text
    scores = [float(td.text) for td in by_css(browser, "table.captions td.score")]
    assert scores == sorted(scores, reverse=True)
    shot(browser, "caption")
    no_console_errors(browser)


def test_rag_answer_with_clickable_citations(browser, live_server, serve_config):
    browser.get(live_server.url + "/rag")
    by_css(browser, "#mode option[value=extractive]")[0].click()
    by_css(browser, "#q")[0].send_keys("How do I mint a token?")
    by_css(browser, "#go")[0].click()
    answer = wait_for(lambda: by_css(browser, "#out .answer"), what="the answer")[0].text
    assert "mint" in answer.lower()
    citations = by_css(browser, "a.citation")
    assert citations and citations[0].text == "Minting tokens"
    assert citations[0].get_attribute("href") == "https://docs.example.com/0"
    shot(browser, "rag")
    before = len(events(serve_config, "rag", "click"))
    browser.execute_script("arguments[0].removeAttribute('href'); arguments[0].click();", citations[0])
    wait_for(lambda: len(events(serve_config, "rag", "click")) > before, what="the citation click event")
    no_console_errors(browser)


def test_error_is_shown_not_swallowed(browser, live_server):
    browser.get(live_server.url + "/translate")
    browser.execute_script("document.getElementById('src').value = 'x'.repeat(17000);")  # > max_prompt_chars
    by_css(browser, "#go")[0].click()
    err = wait_for(lambda: by_css(browser, "#error:not(.hidden)"), what="the error box")[0]
    assert "limit is 16000" in err.text
    shot(browser, "translate-error")


def test_chat_shows_a_refusal_notice(browser, refusing_app):
    from serve_helpers import LiveServer

    with LiveServer(refusing_app) as server:
        browser.get(server.url + "/chat")
        browser.execute_script("localStorage.clear()")
        browser.get(server.url + "/chat")
        by_css(browser, "#input")[0].send_keys("hello")
        by_css(browser, "#send")[0].click()
        notice = wait_for(lambda: by_css(browser, ".msg.assistant .notice:not(.hidden)"), what="the notice")[
            0
        ]
        assert "declined" in notice.text and "Flagged:" in notice.text
        assert by_css(browser, ".msg.assistant .text")[0].text  # the refusal text itself is shown
        shot(browser, "chat-refusal")
        no_console_errors(browser)
