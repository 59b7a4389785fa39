"""Headless Chromium driven by Selenium for the dashboard tests, found by accessible names.

A missing chromium, chromedriver or selenium fails the test like a missing server does
(tests/conftest.py `_start`): it skips only with KALA_TEST_SKIP_MISSING=1, never with CI=true.
Screenshots go to KALA_WEBUI_SHOTS (default /tmp/kala-webui-shots).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.processes import wait_for

SHOTS = Path(os.environ.get("KALA_WEBUI_SHOTS", "/tmp/kala-webui-shots"))
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


class BrowserMissing(RuntimeError):
    pass


def _binaries() -> tuple[str, str]:
    chromium = next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )
    driver = shutil.which("chromedriver") or (
        "/usr/lib/chromium/chromedriver" if Path("/usr/lib/chromium/chromedriver").exists()
        else None
    )
    if not chromium or not driver:
        raise BrowserMissing(
            "chromium and chromedriver are needed: apt-get install chromium chromium-driver"
        )
    return chromium, driver


class Browser:
    def __init__(self, base_url: str) -> None:
        try:
            from selenium import webdriver
            from selenium.webdriver.chrome.service import Service
        except ImportError:
            raise BrowserMissing("selenium is needed: pip install -e '.[test]'") from None
        chromium, driver = _binaries()
        self.profile = Path(tempfile.mkdtemp(prefix="kala-chromium-"))
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        options.add_argument("--window-size=1366,900")
        self.driver = webdriver.Chrome(service=Service(executable_path=driver), options=options)
        self.driver.set_page_load_timeout(30)
        self.base_url = base_url.rstrip("/")
        SHOTS.mkdir(parents=True, exist_ok=True)

    def switch(self, base_url: str) -> None:
        """Talk to another server (cookies are per host, not per port: start clean)."""
        self.base_url = base_url.rstrip("/")
        self.driver.delete_all_cookies()

    # -- navigation and reading

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    @property
    def path(self) -> str:
        url = self.driver.current_url
        return url[len(self.base_url):] if url.startswith(self.base_url) else url

    def text(self) -> str:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By

        for _ in range(5):
            try:
                return self.driver.find_element(By.TAG_NAME, "body").text
            except StaleElementReferenceException:  # the page reloaded itself meanwhile
                continue
        return ""

    def wait_text(self, needle: str, timeout: float = 60, *, refresh: bool = False) -> str:
        """Wait until the page shows `needle` (reloading it between looks when `refresh`)."""

        def shown() -> str | None:
            body = self.text()
            if needle in body:
                return body
            if refresh:
                self.driver.refresh()
            return None

        return wait_for(shown, timeout, f"{needle!r} on {self.path}")  # type: ignore[return-value]

    # -- controls by accessible name

    def field(self, label: str) -> Any:
        """The form control whose <label> text is exactly `label`."""
        from selenium.webdriver.common.by import By

        found = self.driver.find_element(By.XPATH, f'//label[normalize-space()="{label}"]')
        return self.driver.find_element(By.ID, found.get_attribute("for"))

    def fill(self, label: str, value: str) -> None:
        control = self.field(label)
        control.clear()
        control.send_keys(value)

    def choose(self, label: str, option: str) -> None:
        from selenium.webdriver.support.ui import Select

        Select(self.field(label)).select_by_visible_text(option)

    def button(self, name: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.XPATH, f'//button[normalize-space()="{name}"]')

    def link(self, name: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.XPATH, f'//a[normalize-space()="{name}"]')

    def click(self, name: str) -> None:
        """Press the button called `name` and wait for the page it loads."""
        self.driver.execute_script("window.__kalaOldPage = true")
        self.button(name).click()
        wait_for(self._new_page, 30, f"the page after {name!r}")

    def follow(self, name: str) -> None:
        """Follow the link called `name` and wait for the page it loads."""
        self.driver.execute_script("window.__kalaOldPage = true")
        self.link(name).click()
        wait_for(self._new_page, 30, f"the page of the link {name!r}")

    def _new_page(self) -> bool:
        """A new document has loaded (the old one's window marker is gone)."""
        from selenium.common.exceptions import WebDriverException

        try:
            return bool(self.driver.execute_script(
                "return window.__kalaOldPage === undefined && document.readyState === 'complete'"
            ))
        except WebDriverException:  # between two documents
            return False

    # -- screenshots

    def shot(self, name: str, width: int = 1366) -> Path:
        """A screenshot of the whole page (up to 6000 px tall) at `width`."""
        self.driver.set_window_size(width, 900)
        height = self.driver.execute_script(
            "return Math.max(document.documentElement.scrollHeight, document.body.scrollHeight)"
        )
        self.driver.set_window_size(width, min(max(int(height) + 120, 600), 6000))
        self.driver.execute_script("window.scrollTo(0, 0)")
        path = SHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(1366, 900)
        return path

    def shot_of(self, selector: str, name: str, width: int = 1366) -> Path:
        """A screenshot of one element (a chart's card) at `width`."""
        from selenium.webdriver.common.by import By

        self.driver.set_window_size(width, 900)
        path = SHOTS / f"{name}.png"
        self.driver.find_element(By.CSS_SELECTOR, selector).screenshot(str(path))
        self.driver.set_window_size(1366, 900)
        return path

    def overflows(self) -> int:
        """How many pixels the page is wider than the window (0 = no horizontal scroll)."""
        return int(self.driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        ))

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


def start_browser(base_url: str) -> Browser:
    """A browser, or the failure (or, outside CI with KALA_TEST_SKIP_MISSING=1, the skip)."""
    try:
        return Browser(base_url)
    except BrowserMissing as exc:
        ci = os.environ.get("CI", "").lower() == "true"
        if not ci and os.environ.get("KALA_TEST_SKIP_MISSING") == "1":
            pytest.skip(str(exc))
        raise
