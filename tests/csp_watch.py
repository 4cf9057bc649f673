"""What a browser page's Content-Security-Policy blocked, for the Chromium tests (Playwright).

Two witnesses, so a block cannot pass unseen: the page's ``securitypolicyviolation`` events
(reported through a Playwright binding, which the page's policy does not govern) and Chromium's
console lines ("Refused to ... because it violates the following Content Security Policy
directive ...").
"""

from __future__ import annotations

from playwright.async_api import ConsoleMessage, Page

from tests.factories import eventually

_REPORT = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.__chatdCspViolation(
    `${event.effectiveDirective} blocked ${event.blockedURI || "inline"} (${event.sourceFile}:${event.lineNumber})`
  );
});
"""


class CspWatch:
    """Collects every CSP violation on the pages it watches."""

    def __init__(self) -> None:
        self.violations: list[str] = []

    async def watch(self, page: Page) -> Page:
        """Watch ``page`` from its next navigation on; returns it."""
        await page.expose_function("__chatdCspViolation", self._report)
        await page.add_init_script(_REPORT)
        page.on("console", self._console)
        return page

    def _report(self, violation: str) -> None:
        self.violations.append(violation)

    def _console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            self.violations.append(f"console: {message.text}")

    async def wait_for(self, fragment: str, timeout: float = 10.0) -> str:
        """The first violation that mentions ``fragment``, once reported."""

        async def found() -> str | None:
            return next((violation for violation in self.violations if fragment in violation), None)

        return await eventually(found, timeout=timeout)
