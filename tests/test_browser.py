"""The copilot in a real browser: `grounding ui` in another process, headless Chromium driven by selenium."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import copy_tree, free_port, git_repo

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
LABEL = re.compile(r"\[1\] (\S+\.py):(\d+)-(\d+)@([0-9a-f]{12})")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver (scripts/setup.sh installs them)",
    ),
]


@contextlib.contextmanager
def running_copilot(
    tmp_path: Path, *args: str, drop: tuple[str, ...] = ()
) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """`grounding ui --headless ARGS` on a free port, with this test's GROUNDING_* environment less `drop`;
    yields (url, process, log file) once it answers, and stops it with Ctrl-C after."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("GROUNDING_UI_USER", "PREFECT_API_URL", *drop)}
    log_path = tmp_path / "ui.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "grounding.cli", "ui", "--port", str(port), "--headless", *args],
            env=env,  # GROUNDING_DATABASE_URL and GROUNDING_HOME of this test
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while "grounding copilot at" not in log_path.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.3)
            yield f"http://127.0.0.1:{port}", proc, log_path
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # Ctrl-C
            proc.wait(timeout=60)


@pytest.fixture
def copilot(engine, repo_name, hashing, tmp_path):
    """`grounding ui --headless` on a free port against the test database, with `requests` ingested."""
    from grounding.index.ingest import ingest

    ingest(str(git_repo(copy_tree("requests", tmp_path / "requests"))), name=repo_name, embedder=hashing)
    with running_copilot(tmp_path) as (url, proc, log_path):
        yield url, proc
    assert proc.returncode == 0, f"grounding ui stops cleanly on Ctrl-C:\n{log_path.read_text()[-3000:]}"


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1100")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_ask_in_the_browser_and_see_a_cited_location(copilot, browser, repo_name, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, proc = copilot
    browser.get(f"{url}/?{urllib.parse.urlencode({'repo': repo_name})}")  # the link preselects the repository
    wait = WebDriverWait(browser, 180, poll_frequency=0.5)
    question = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="stChatInputTextArea"]'))
    assert "trusted mode" in browser.find_element(By.CSS_SELECTOR, '[data-testid="stSidebar"]').text
    question.send_keys("how does a session resolve redirects?")
    question.send_keys(Keys.ENTER)

    def cited(driver):
        """The first citation's label, once it and its code are on the page."""
        if not driver.find_elements(By.CSS_SELECTOR, '[data-testid="stExpanderDetails"] .grounding-listing'):
            return None
        for summary in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stExpander"] summary'):
            if LABEL.search(summary.text):
                return summary
        return None

    summary = wait.until(cited)
    path, start, end, commit = LABEL.search(summary.text).groups()
    browser.execute_script("arguments[0].scrollIntoView()", summary)
    screenshot = tmp_path / "copilot.png"
    browser.save_screenshot(str(screenshot))
    print(f"screenshot: {screenshot}")
    listing = browser.find_element(By.CSS_SELECTOR, '[data-testid="stExpanderDetails"] .grounding-listing')
    numbers = [int(e.text) for e in listing.find_elements(By.CSS_SELECTOR, "[data-line] .ln")]
    marked = [int(e.text) for e in listing.find_elements(By.CSS_SELECTOR, "[data-cited] .ln")]
    assert (marked[0], marked[-1]) == (int(start), int(end)), "the highlighted lines are the citation's, as numbered"
    assert marked == list(range(int(start), int(end) + 1)) and numbers[0] < int(start), "inside a little context"
    highlighted = listing.find_element(By.CSS_SELECTOR, "[data-cited]").value_of_css_property("background-color")
    plain = listing.find_element(By.CSS_SELECTOR, "[data-line]:not([data-cited])")
    plain = plain.value_of_css_property("background-color")
    assert highlighted != plain, "the cited lines look different"
    assert listing.text.strip(), "the cited code is on the page"
    assert f"[1] {path}:{start}-{end}@{commit}" in browser.find_element(By.TAG_NAME, "body").text
    assert proc.poll() is None, "the server keeps running"


def websocket_status(url: str, host: str) -> str:
    """The status line Streamlit answers a WebSocket upgrade of its session stream with, sent with `host` as Host
    and Origin (a page served from `host`, as a DNS rebinding page is: same origin in the browser's eyes)."""
    import base64
    import socket

    port = urllib.parse.urlsplit(url).port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            (
                f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://{host}:{port}\r\n"
                "Sec-WebSocket-Protocol: streamlit\r\n\r\n"
            ).encode()
        )
        return s.recv(400).decode(errors="replace").split("\r\n")[0]


def test_the_copilot_without_login_refuses_a_page_whose_name_was_rebound_to_this_machine(engine, tmp_path):
    """Trusted mode has no login, so the Host a session comes from must be this machine's own name (from a review:
    any Host was admitted, and a web page re-pointing its name at 127.0.0.1 could read every repository)."""
    with running_copilot(tmp_path) as (url, _proc, _log):
        assert " 101 " in websocket_status(url, "127.0.0.1")
        assert " 101 " in websocket_status(url, "localhost")
        assert " 101 " not in websocket_status(url, "rebind.attacker.example")
