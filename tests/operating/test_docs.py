"""/docs: Swagger UI renders the OpenAPI description in a real browser (Debian's chromium driven
by Playwright), with every file served by chatd itself."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from chatd.handlers.docs import DOCS_POLICY, load_spec
from tests.conftest import embedded_settings
from tests.csp_watch import CspWatch

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HTTP_METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture
async def docs_api(aiohttp_client, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The embedded set is enough: /docs touches no backend."""
    from chatd.app import create_app

    return await aiohttp_client(create_app(embedded_settings(tmp_path), run_workers=False))


def _operations() -> set[tuple[str, str]]:
    spec = load_spec()
    return {(method.upper(), path) for path, item in spec["paths"].items() for method in item if method in HTTP_METHODS}


async def test_swagger_ui_renders_every_operation_from_files_chatd_serves(docs_api) -> None:  # type: ignore[no-untyped-def]
    base = str(docs_api.make_url("")).rstrip("/")
    requested: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = await browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            csp = CspWatch()
            await csp.watch(page)
            loaded = await page.goto(f"{base}/docs")
            assert loaded is not None and loaded.headers["content-security-policy"] == DOCS_POLICY
            await page.wait_for_selector(".opblock-summary", timeout=30_000)
            # Open an operation and its schemas: more of Swagger UI runs under the policy.
            await page.locator(".opblock-summary").first.click()
            await page.wait_for_selector(".opblock-body", timeout=10_000)
            blocks = page.locator(".opblock-summary")
            shown = set()
            for index in range(await blocks.count()):
                block = blocks.nth(index)
                method = (await block.locator(".opblock-summary-method").inner_text()).strip()
                path = (await block.locator(".opblock-summary-path").get_attribute("data-path")) or ""
                shown.add((method.upper(), path))
            title = await page.locator(".info .title").inner_text()
        finally:
            await browser.close()
    assert shown == _operations()
    assert "chatd" in title
    assert not errors, errors
    assert not csp.violations, csp.violations
    # Nothing from a CDN: every file came from chatd.
    assert requested and all(url.startswith(base + "/") for url in requested), requested
    assert f"{base}/openapi.json" in requested


async def test_the_docs_files_are_served_and_nothing_else(docs_api) -> None:  # type: ignore[no-untyped-def]
    page = await docs_api.get("/docs")
    assert page.status == 200 and page.content_type == "text/html"
    start = await docs_api.get("/docs/assets/chatd-init.js")
    assert start.status == 200 and start.content_type == "text/javascript"
    assert b"SwaggerUIBundle(" in await start.read()
    bundle = await docs_api.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.status == 200 and bundle.content_type == "text/javascript"
    assert b"SwaggerUIBundle" in await bundle.read()
    for name in ("index.html", "..%2Fopenapi.yaml", "swagger-ui-bundle.js.map"):
        missing = await docs_api.get(f"/docs/assets/{name}")
        assert missing.status == 404
        assert (await missing.json())["error"]["code"] == "not_found"
