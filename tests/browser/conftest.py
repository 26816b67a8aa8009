"""Fixtures of the browser tests: Debian's Chromium driven by Playwright, with every request that leaves the
machine blocked (so a page that needs the internet fails here as it would on a factory network), and
screenshots of each test.

Screenshots go to ``$PATCHBANK_SCREENSHOTS`` (default ``build/screenshots``; CI keeps them). With
``PATCHBANK_REFRESH_DOCS=1`` the tests also write the README's small copies to ``docs/console/``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from PIL import Image

from tests.integration.conftest import fpfh_build, point_build  # noqa: F401  (the session's banks, for tests here)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright, Request, Route

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDTH = 1000  # pixels: the README's screenshots
DOCS_SHOTS = ROOT / "docs" / "console"
DOCS_SHOT_BYTES = 150 * 1024
LOCAL_HOSTS = {"127.0.0.1"}


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "needs the playwright package (pip install -e '.[dev]')"
    if not CHROMIUM.exists():
        return f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium; scripts/setup.sh does)"
    return None


@pytest.fixture(scope="package")  # ended with the browser tests: Playwright's sync API holds an asyncio
def playwright() -> Iterator[Playwright]:  # loop on the main thread, which the later tests need free
    if reason := _missing():
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    b = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield b
    b.close()


@dataclass
class Tab:
    """A browser tab on the service: what it tried to fetch from outside (blocked) and the page's uncaught
    errors, both checked empty when the test ends."""

    page: Page
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    api_keys: list[str | None] = field(default_factory=list)


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": WIDTH, "height": 760})
    page = context.new_page()
    page.set_default_timeout(30_000)
    t = Tab(page)

    def route(r: Route, req: Request) -> None:
        t.urls.append(req.url)
        t.api_keys.append(req.headers.get("x-api-key"))
        if urlsplit(req.url).hostname in LOCAL_HOSTS:
            r.continue_()
        else:
            t.blocked.append(req.url)
            r.abort("internetdisconnected")

    context.route("**/*", route)
    page.on("pageerror", lambda exc: t.errors.append(str(exc)))
    yield t
    context.close()
    assert not t.blocked, f"the page asked for outside addresses: {t.blocked}"
    assert not t.errors, f"uncaught errors in the page: {t.errors}"


def shoot(page: Page, name: str, docs: bool = True) -> Path:
    """Screenshot the whole page to $PATCHBANK_SCREENSHOTS/<name>.png; with PATCHBANK_REFRESH_DOCS=1 (and
    ``docs``) also a palette PNG of at most 150 KB to docs/console/<name>.png, for the README."""
    folder = Path(os.environ.get("PATCHBANK_SCREENSHOTS") or ROOT / "build" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    if docs and os.environ.get("PATCHBANK_REFRESH_DOCS") == "1":
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        image = Image.open(path).convert("RGB")
        if image.width > WIDTH:
            image = image.resize((WIDTH, round(image.height * WIDTH / image.width)), Image.Resampling.LANCZOS)
        for colours in (256, 128, 64, 32):
            buf = io.BytesIO()
            image.quantize(colours, dither=Image.Dither.NONE).save(buf, format="PNG", optimize=True)
            if buf.tell() <= DOCS_SHOT_BYTES:
                break
        (DOCS_SHOTS / f"{name}.png").write_bytes(buf.getvalue())
    return path
