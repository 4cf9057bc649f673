"""Spans name the route, never the path: a tenant's token is a segment of the path.

The aiohttp server instrumentation puts the request's path into its span (``http.target`` and
``http.url``, or ``url.path`` and ``url.query`` with the stable HTTP conventions), and it has no
hook to change them. ``RouteOnlyPaths`` is a span processor that rewrites them when the span
starts, the one moment an SDK span's attributes can still change (they are frozen before any
``on_end`` runs): the matched route's template (``/applications/{token}/chats/{chat}``, which
the instrumentation also records as ``http.route``), or, for a path no route matched, the path
with its ``/applications/<segment>`` masked as the gateway's access log does. Query values are
replaced by ``REDACTED`` (a search's words are message content).

Imported only while tracing is on (it subclasses the SDK's SpanProcessor).
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from opentelemetry.context import Context
from opentelemetry.sdk.trace import Span, SpanProcessor

# Where a token sits: the segment after /applications/, whatever its case (chatd's routes are
# case-sensitive, but a mistyped path still carries the token).
_TOKEN_SEGMENT = re.compile(r"(/applications/)[^/?#]+", re.IGNORECASE)
_PATHS = ("http.target", "url.path")
_URLS = ("http.url", "url.full")
_QUERIES = ("url.query",)
ROUTE = "http.route"
REDACTED = "REDACTED"

# Headers the instrumentation may capture (when OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_*
# asks) after the span has started, too late for the processor: it replaces their values with
# "[REDACTED]" itself if their names are in this variable. Location and Referer hold paths (a
# 201's Location names the token), the others credentials.
SANITIZE_FIELDS = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS"
SENSITIVE_HEADERS = ("authorization", "cookie", "set-cookie", "location", "referer", "content-location")


def mask_path(path: str) -> str:
    """``/applications/<token>/chats/1?x=y`` -> ``/applications/{token}/chats/1`` (no query)."""
    return _TOKEN_SEGMENT.sub(r"\1{token}", path.split("?", 1)[0].split("#", 1)[0])


def redact_query(query: str) -> str:
    """Each parameter's value replaced: ``query=hello&after=3`` -> ``query=REDACTED&after=REDACTED``."""
    return urlencode([(name, REDACTED) for name, _ in parse_qsl(query, keep_blank_values=True)], safe=REDACTED)


def route_only(attributes: dict[str, Any]) -> dict[str, Any]:
    """The attributes to set instead (only those that change): paths and URLs by their route.

    ``attributes`` are a span's as the instrumentation set them; ``http.route`` is the matched
    route's template, or empty when none matched.
    """
    route = attributes.get(ROUTE) or None
    changes: dict[str, Any] = {}
    for key, value in attributes.items():
        if not isinstance(value, str) or key == ROUTE:
            continue
        if key in _PATHS:
            masked = route or mask_path(value)
        elif key in _URLS:
            parts = urlsplit(value)
            masked = f"{parts.scheme}://{parts.netloc}{route or mask_path(parts.path)}"
        elif key in _QUERIES:
            masked = redact_query(value)
        else:  # anything else that quotes a path (a header captured at the start, say)
            masked = _TOKEN_SEGMENT.sub(r"\1{token}", value)
        if masked != value:
            changes[key] = masked
    return changes


class RouteOnlyPaths(SpanProcessor):
    """Rewrites each span's path attributes to its route as it starts (see the module)."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        changes = route_only(dict(span.attributes or {}))
        if changes:
            span.set_attributes(changes)


def redact_sensitive_headers(environ: MutableMapping[str, str]) -> None:
    """Add ``SENSITIVE_HEADERS`` to the instrumentation's list of headers to redact (the
    operator's own list, if any, is kept)."""
    names = [name.strip() for name in environ.get(SANITIZE_FIELDS, "").split(",") if name.strip()]
    missing = [header for header in SENSITIVE_HEADERS if header not in {name.lower() for name in names}]
    if missing:
        environ[SANITIZE_FIELDS] = ",".join(names + missing)
