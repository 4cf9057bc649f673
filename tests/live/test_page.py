"""The page at / in a real browser: Debian's chromium driven by Playwright, on both backend sets.

Two pages on one chat: one sends, the other shows the message live; an edit travels back; a
search finds it. Screenshots of both pages are saved under ``test-artifacts/`` (git-ignored).
The layout test checks, at a phone's and a desktop's width, that no control leaves its panel.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from chatd.app import create_app
from chatd.handlers.page import PAGE_POLICY
from tests.conftest import Namespace, embedded_settings
from tests.csp_watch import CspWatch

CHROMIUM = "/usr/bin/chromium"  # Debian's package (make browser-tools); Playwright's own download cannot work here
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: make browser-tools installs Debian's chromium")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


async def serve(namespace: Namespace, aiohttp_client) -> str:  # type: ignore[no-untyped-def]
    """chatd with its workers running (role all), as `make run` serves it; its base URL."""
    settings = await namespace.serving_settings(index_batch_wait_seconds=0.05, reconcile_interval_seconds=0.2)
    client = await aiohttp_client(create_app(settings))
    return str(client.make_url("/"))


async def search_until_found(page: Page, query: str, text: str) -> None:
    """Search until the indexer has caught up (it runs a fraction of a second behind the store)."""
    results = page.locator("#search-results")
    async with asyncio.timeout(30):
        while True:
            await page.fill("#search-input", query)
            await page.click("#search-button")
            await expect(results).to_be_visible()
            if text in await results.inner_text():
                return
            await asyncio.sleep(0.2)


async def test_two_pages_on_one_chat(namespace: Namespace, aiohttp_client, browser: Browser) -> None:  # type: ignore[no-untyped-def]
    base = await serve(namespace, aiohttp_client)
    sender, watcher = await browser.new_page(), await browser.new_page()
    errors: list[str] = []
    csp = CspWatch()
    for page in (sender, watcher):
        page.on("pageerror", lambda error: errors.append(str(error)))
        await csp.watch(page)

    loaded = await sender.goto(base)
    # The page works under its policy: nothing it does is blocked (asserted at the end).
    assert loaded is not None and loaded.headers["content-security-policy"] == PAGE_POLICY
    await expect(sender.locator('a[href="/docs"]')).to_have_text("API docs")
    await sender.fill("#app-name", "Browser test")
    await sender.click("#create-app")
    await expect(sender.locator("#chats-panel")).to_be_visible()
    await sender.click("#new-chat")
    await expect(sender.locator("#chat-title")).to_have_text("Chat 1")
    token = await sender.input_value("#token")

    await watcher.goto(f"{base}#token={token}&chat=1")
    await expect(watcher.locator("#chat-title")).to_have_text("Chat 1")
    await expect(watcher.locator("#status")).to_have_text("live: chat 1")

    await sender.fill("#message-input", "hello from the other page")
    await sender.click("#send")
    shown = watcher.locator('#messages li[data-number="1"] .content')
    await expect(shown).to_have_text("hello from the other page")

    # An edit on the watcher reaches the sender live.
    watcher.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept("hello, edited")))
    await watcher.click('#messages li[data-number="1"] .edit')
    await expect(sender.locator('#messages li[data-number="1"] .content')).to_have_text("hello, edited")

    await search_until_found(watcher, "EDITD", "hello, edited")
    ARTIFACTS.mkdir(exist_ok=True)
    for name, page in (("sender", sender), ("watcher", watcher)):
        await page.screenshot(path=str(ARTIFACTS / f"page-{name}-{namespace.backend_set}.png"), full_page=True)
    assert not errors
    assert not csp.violations, csp.violations


async def test_the_watch_sees_what_the_page_policy_blocks(aiohttp_client, browser: Browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The check above can fail: inline code, which the page's policy refuses, is reported."""
    client = await aiohttp_client(create_app(embedded_settings(tmp_path), run_workers=False))
    page = await browser.new_page()
    csp = CspWatch()
    await csp.watch(page)
    await page.goto(str(client.make_url("/")))
    await expect(page.locator("#status")).to_have_text("not connected")
    assert not csp.violations, csp.violations
    await page.evaluate("document.body.setAttribute('style', 'color: red')")
    await page.evaluate(
        "() => { const s = document.createElement('script'); s.textContent = 'window.ran = 1';"
        " document.body.append(s); }"
    )
    await csp.wait_for("style-src-attr")
    await csp.wait_for("script-src-elem")
    assert await page.evaluate("window.ran") is None  # blocked, not merely reported


# A phone held upright and a laptop screen: the widths the page is laid out for.
VIEWPORTS = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1280, "height": 900}}

# Every visible control and list item of every visible panel, measured against the panel's
# inner edges (its border box less the border), and the document against the viewport.
_OVERFLOWS = """
() => {
  const found = [];
  const name = (element) => element.id ? `#${element.id}` : element.tagName.toLowerCase() +
    (element.className ? `.${element.className.split(" ").join(".")}` : "");
  const viewport = document.documentElement.clientWidth;
  if (document.documentElement.scrollWidth > viewport) {
    found.push(`document scrolls sideways: ${document.documentElement.scrollWidth} > ${viewport}`);
  }
  for (const panel of document.querySelectorAll("main > section")) {
    const box = panel.getBoundingClientRect();
    if (box.width === 0) continue;  // hidden
    const style = getComputedStyle(panel);
    const left = box.left + parseFloat(style.borderLeftWidth);
    const right = box.right - parseFloat(style.borderRightWidth);
    if (box.left < 0 || box.right > viewport) {
      found.push(`${name(panel)} [${box.left}, ${box.right}] leaves the viewport (${viewport})`);
    }
    for (const element of panel.querySelectorAll("button, input, label, form, li, h2, p")) {
      const inner = element.getBoundingClientRect();
      if (inner.width === 0) continue;
      if (inner.right > right + 0.5 || inner.left < left - 0.5) {
        found.push(`${name(element)} [${inner.left}, ${inner.right}] outside ${name(panel)} [${left}, ${right}]`);
      }
    }
  }
  return found;
}
"""


async def assert_laid_out(page: Page, shot: Path) -> None:
    await page.screenshot(path=str(shot), full_page=True)
    overflows = await page.evaluate(_OVERFLOWS)
    assert not overflows, f"{overflows} (screenshot: {shot})"


@pytest.mark.parametrize("viewport", VIEWPORTS)
async def test_no_control_leaves_its_panel(aiohttp_client, browser: Browser, tmp_path: Path, viewport: str) -> None:  # type: ignore[no-untyped-def]
    """Before an application is opened, with one open, and in a chat with a long unbroken message."""
    client = await aiohttp_client(create_app(embedded_settings(tmp_path)))
    page = await browser.new_page(viewport=VIEWPORTS[viewport])
    csp = CspWatch()
    await csp.watch(page)
    await page.goto(str(client.make_url("/")))
    await expect(page.locator("#status")).to_have_text("not connected")
    await assert_laid_out(page, tmp_path / f"{viewport}-start.png")
    # Nothing to show before an application is open: the chat panels stay hidden.
    await expect(page.locator("#chats-panel")).to_be_hidden()
    await expect(page.locator("#chat-panel")).to_be_hidden()

    await page.fill("#app-name", "An application with a rather long name, to see where it wraps")
    await page.click("#create-app")
    await expect(page.locator("#chats-panel")).to_be_visible()
    await assert_laid_out(page, tmp_path / f"{viewport}-application.png")

    await page.click("#new-chat")
    await expect(page.locator("#status")).to_have_text("live: chat 1")
    await page.fill("#message-input", "x" * 300)
    await page.click("#send")
    await expect(page.locator('#messages li[data-number="1"] .edit')).to_be_visible()
    await page.fill("#search-input", "xxxx")
    await page.click("#search-button")
    await expect(page.locator("#search-results")).to_be_visible()
    await assert_laid_out(page, tmp_path / f"{viewport}-chat.png")
    assert not csp.violations, csp.violations
