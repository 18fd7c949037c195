"""Headless Chromium for the tests, driven by Playwright: Debian's chromium (make test
installs it), never a browser Playwright downloads."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, sync_playwright

# The flags the machine needs: no sandbox as root, no GPU, and no background connections to
# Google's hosts, which a closed network refuses by the dozen.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def chromium_path() -> Path:
    path = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    if not path.is_file():
        raise RuntimeError(
            f"No Chromium at {path}: `make test` installs Debian's chromium package; "
            "elsewhere set CHROMIUM to a Chromium binary."
        )
    return path


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium; Playwright gives each launch a fresh, empty profile."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium_path()), args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()
