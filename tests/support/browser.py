"""A real browser for the console's tests: Debian's Chromium, driven by Playwright.

Chromium is found as ``$DAI_CHROMIUM``, else ``chromium`` (or ``chromium-browser``,
``google-chrome``) on the PATH; ``.ci/run`` installs Debian's package. Without one the tests
skip, saying so. Playwright's own browser downloads are not used (no network for them here).

Every page a test opens is watched: an error in its console, an uncaught exception, a request
that failed or answered 4xx/5xx fails the test at the end unless the test said it expected it
(:meth:`PageWatch.expect`). Screenshots go to ``test-artifacts/console/`` at the repository's root.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from playwright.async_api import ConsoleMessage, Page, Request, Response

from support.paths import REPO

__all__ = ["ARTIFACTS", "CHROMIUM", "LAUNCH_ARGS", "PageWatch", "screenshots"]

CHROMIUM = (
    os.environ.get("DAI_CHROMIUM")
    or shutil.which("chromium")
    or shutil.which("chromium-browser")
    or shutil.which("google-chrome")
)
# Headless, as root in a container, and quiet: no connections of its own to the outside, which a
# closed network refuses many at a time.
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts" / "console"
WIDTHS = (1280, 375)


@dataclass
class PageWatch:
    """What went wrong on a page: console errors, uncaught exceptions, failed requests."""

    page: Page
    problems: list[str] = field(default_factory=list)
    expected: list[tuple[int, re.Pattern[str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))
        self.page.on("requestfailed", self._failed)
        self.page.on("response", self._response)

    def expect(self, status: int, url: str) -> None:
        """A response with ``status`` to a URL matching ``url`` is part of the test, not a fault."""
        self.expected.append((status, re.compile(url)))

    def _is_expected(self, status: int, url: str) -> bool:
        return any(status == s and pattern.search(url) for s, pattern in self.expected)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        # Chromium logs every 4xx/5xx as "Failed to load resource"; those are judged by _response.
        if "Failed to load resource" in message.text:
            return
        self.problems.append(f"console: {message.text}")

    def _failed(self, request: Request) -> None:
        failure = request.failure or ""
        if "ERR_ABORTED" in failure:  # a stream the page closed on purpose (a download, a stopped call)
            return
        self.problems.append(f"request failed: {request.method} {request.url}: {failure}")

    def _response(self, response: Response) -> None:
        if response.status >= 400 and not self._is_expected(response.status, response.url):
            self.problems.append(f"{response.status} for {response.request.method} {response.url}")

    def check(self) -> None:
        assert self.problems == [], "\n".join(self.problems)


async def screenshots(page: Page, name: str) -> list[Path]:
    """The page at 1280 px and at 375 px wide, full length, as ``<name>-<width>.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    saved = []
    size = page.viewport_size or {"width": 1280, "height": 800}
    for width in WIDTHS:
        await page.set_viewport_size({"width": width, "height": 800})
        path = ARTIFACTS / f"{name}-{width}.png"
        await page.screenshot(path=str(path), full_page=True)
        saved.append(path)
    await page.set_viewport_size(size)
    return saved
