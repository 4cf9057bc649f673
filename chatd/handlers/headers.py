"""The headers every response carries: ``Server: chatd`` and the browser's security headers.

Every answer passes through one of three places, and each calls ``apply`` before the headers
go out: the error middleware, for every response a handler returns (errors and 404s included);
a stream's handler, before it prepares the stream (SSE, the WebSocket upgrade), since a stream's
headers are sent before the middleware sees it; and ``ChatdRequestHandler`` for the requests the
HTTP parser refuses, which never reach the application (``chatd.handlers.protocol``). Not an
``on_response_prepare`` signal: that awaits a coroutine for every response, about 3% of the
create path's throughput (measured 2026-12-06), for what three calls do.

A response that states no ``Content-Security-Policy`` of its own (JSON, errors, streams) gets
one that lets it load nothing and be framed nowhere; the two HTML pages (``/`` and ``/docs``)
state what they load with ``policy()``.
"""

from __future__ import annotations

from collections.abc import MutableMapping

from aiohttp import hdrs, web

SERVER = "chatd"
CONTENT_SECURITY_POLICY = "Content-Security-Policy"

# Tokens travel in URL paths: no page, link or fetch may tell another site where it came from.
# nosniff: a JSON answer that echoes a client's text is never run as a script or a page.
_FIXED = (
    (hdrs.SERVER, SERVER),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    # For browsers older than CSP's frame-ancestors; both say no framing (clickjacking).
    ("X-Frame-Options", "DENY"),
)


def policy(**directives: str) -> str:
    """A Content-Security-Policy that allows nothing beyond ``directives``, and no framing.

    ``policy(script_src="'self'")`` -> ``default-src 'none'; script-src 'self'; base-uri 'none';
    frame-ancestors 'none'``. Directive names are written with underscores for dashes.
    """
    parts = {"default_src": "'none'", **directives, "base_uri": "'none'", "frame_ancestors": "'none'"}
    return "; ".join(f"{name.replace('_', '-')} {value}" for name, value in parts.items())


DEFAULT_POLICY = policy()


def apply(headers: MutableMapping[str, str]) -> None:
    """Set chatd's fixed headers, and the default policy unless the response has its own."""
    for name, value in _FIXED:
        headers[name] = value
    if CONTENT_SECURITY_POLICY not in headers:
        headers[CONTENT_SECURITY_POLICY] = DEFAULT_POLICY


def applied(response: web.StreamResponse) -> web.StreamResponse:
    """``response`` with chatd's headers, unless it went out already (a stream, which set its own)."""
    if not response.prepared:
        apply(response.headers)
    return response
