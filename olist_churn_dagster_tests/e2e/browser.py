"""Headless Chromium for the end-to-end tests: one driver on a server's UI, pages opened
until they have rendered, a screenshot of each in test-output/. Shared by the browser test
and the walkthrough test, so both see the UI the same way."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from olist_churn_dagster_tests.e2e.conftest import OUTPUT_DIR

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Tall enough that the asset catalog renders every row (the list is virtualised).
    "--window-size=1600,2400",
)
RENDER_TIMEOUT = 60
# Clicks the dialog's "Skip" button when the dialog is shown; true when it clicked.
SKIP_COMMUNITY_DIALOG = """
for (const button of document.querySelectorAll("button")) {
  if (button.textContent.trim() === "Skip" && button.offsetParent !== null) {
    button.click();
    return true;
  }
}
return false;
"""


@contextlib.contextmanager
def chromium(server_url: str) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a fresh profile, pointed at the server; fails the test
    (not skips it) when Chromium or its driver is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found: the browser tests need Chromium and its "
            "driver. `make test` installs them (target `browser`: apt-get install chromium "
            "chromium-driver).",
            pytrace=False,
        )
    profile = tempfile.mkdtemp(prefix="e2e-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in CHROME_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={profile}")
    try:
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    except WebDriverException as exc:
        shutil.rmtree(profile, ignore_errors=True)
        pytest.fail(f"Chromium did not start: {exc.msg}", pytrace=False)
    try:
        # Mark the UI's first-visit community dialog as seen for this fresh profile.
        driver.get(f"{server_url}/server_info")
        driver.execute_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def body_text(driver: webdriver.Chrome) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def open_and_wait(
    driver: webdriver.Chrome,
    url: str,
    texts: list[str],
    shot: str,
    gone: tuple[str, ...] = ("fetching statuses",),
) -> str:
    """Open `url`, wait until every text is rendered and no `gone` text (a loading state)
    is left, dismiss the welcome dialog, and save a screenshot to test-output/; returns the
    page's text."""
    driver.get(url)

    def rendered(d: webdriver.Chrome) -> bool:
        text = body_text(d)
        return all(t in text for t in texts) and not any(t in text for t in gone)

    try:
        WebDriverWait(driver, RENDER_TIMEOUT, poll_frequency=0.5).until(rendered)
    except TimeoutException:
        OUTPUT_DIR.mkdir(exist_ok=True)
        driver.save_screenshot(str(OUTPUT_DIR / f"{shot}-timeout.png"))
        page = body_text(driver)
        missing = [text for text in texts if text not in page]
        missing += [f"no {text!r}" for text in gone if text in page]
        raise AssertionError(
            f"{url} did not render {missing} within {RENDER_TIMEOUT} s; page text:\n" + page[:3000]
        ) from None
    # The UI greets a new browser profile with a newsletter dialog over the page; the
    # fixture marks it seen, and should that not hold, it is skipped here.
    WebDriverWait(driver, 10, poll_frequency=0.5).until(
        lambda d: d.execute_script(SKIP_COMMUNITY_DIALOG) is False
    )
    OUTPUT_DIR.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(OUTPUT_DIR / f"{shot}.png"))
    return body_text(driver)
