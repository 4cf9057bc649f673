"""No span holds a tenant's token: paths become route templates (chatd.tracing_paths).

A tenant's traffic (creations, reads, a search, edits, a live stream, 404s and a 405) through the
real instrumented app, with the SDK's in-memory exporter, under the instrumentation's default
(old) HTTP conventions and under ``http/dup`` (old and stable: ``url.path``, ``url.query``), and
with every request and response header captured. Every name, attribute, event and link of every
span is searched for the token.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.instrumentation._semconv import _OpenTelemetrySemanticConventionStability
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from chatd.tracing_paths import SANITIZE_FIELDS
from tests.conftest import Api
from tests.factories import eventually
from tests.live.helpers import SseStream
from tests.operating.spans import recorded_spans

SEARCH = "/applications/{token}/chats/{chat}/messages/search"
EVENTS = "/applications/{token}/chats/{chat}/events"


@pytest.fixture(params=["default", "http/dup"])
def semconv(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def spans(semconv: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    if semconv != "default":
        monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", semconv)
    # The instrumentation reads its conventions once per process; make it read them again
    # (monkeypatch puts the process's reading back afterwards).
    monkeypatch.setattr(_OpenTelemetrySemanticConventionStability, "_initialized", False)
    monkeypatch.setattr(_OpenTelemetrySemanticConventionStability, "_OTEL_SEMCONV_STABILITY_SIGNAL_MAPPING", {})
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", ".*")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", ".*")
    monkeypatch.setenv(SANITIZE_FIELDS, "x-operator-secret")  # install() adds its own to the operator's
    with recorded_spans() as exporter:
        yield exporter


async def tenant_traffic(api: Api) -> str:
    """What a tenant does, straight to chatd (the instrumented app); returns its token."""
    client = api.client
    token = await api.create_application()
    base = f"/applications/{token}"
    referer = {"Referer": f"http://page.example{base}/chats/1"}
    chat = await api.create_chat(token)
    await api.settle()
    async with client.get(f"{base}/chats/{chat}/events", headers=referer) as events:
        assert events.status == 200
        await api.create_message(token, chat, "hello traces", idempotency_key="k-1")
        await api.settle()
        assert (await SseStream(events).next()).data["content"] == "hello traces"
    for method, path, status in [
        ("GET", base, 200),
        ("PATCH", base, 200),
        ("GET", f"{base}/chats?page=1&per_page=5", 200),
        ("GET", f"{base}/chats/{chat}", 200),
        ("GET", f"{base}/chats/{chat}/messages", 200),
        ("GET", f"{base}/chats/{chat}/messages/1", 200),
        ("PATCH", f"{base}/chats/{chat}/messages/1", 200),
        ("GET", f"{base}/chats/{chat}/messages/search?query=hello", 200),
        ("GET", f"{base}/no/such/path?x={token}", 404),
        ("GET", f"{base}x/chats", 404),
        ("DELETE", base, 405),
    ]:
        body = {"application": {"name": "renamed"}} if path == base else {"content": "edited"}
        async with client.request(method, path, json=body if method == "PATCH" else None, headers=referer) as answer:
            assert answer.status == status, (method, path, await answer.text())
    await api.settle()
    return token


def texts(span: ReadableSpan) -> Iterator[str]:
    """Everything a span exports that is text: its name, status, and every attribute anywhere."""

    def values(attributes: Any) -> Iterator[str]:
        for key, value in (attributes or {}).items():
            yield key
            yield from (map(str, value) if isinstance(value, (list, tuple)) else [str(value)])

    yield span.name
    yield span.status.description or ""
    yield from values(span.attributes)
    yield from values(span.resource.attributes)
    for event in span.events:
        yield event.name
        yield from values(event.attributes)
    for link in span.links:
        yield from values(link.attributes)


async def test_no_span_holds_the_token(spans: InMemorySpanExporter, semconv: str, make_api) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(live_keepalive_seconds=0.2)
    token = await tenant_traffic(api)

    async def server_spans() -> list[ReadableSpan]:
        found = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
        # The stream's span ends when its handler sees the client gone.
        return found if any(s.attributes.get("http.route") == EVENTS for s in found) else []

    server = await eventually(server_spans, timeout=15)
    finished = spans.get_finished_spans()
    leaks = [(span.name, text) for span in finished for text in texts(span) if token in text]
    assert not leaks, f"{len(leaks)} span texts hold the token, e.g. {leaks[0]}"

    # The paths are there, as templates; the query's values are not.
    paths = {key for span in server for key in ("http.target", "url.path") if key in span.attributes}
    assert paths == ({"http.target", "url.path"} if semconv == "http/dup" else {"http.target"}), paths
    [search] = [s for s in server if s.attributes.get("http.route") == SEARCH]
    for key in paths:
        assert search.attributes[key] == SEARCH
    if "url.query" in search.attributes:
        assert search.attributes["url.query"] == "query=REDACTED"
    if "http.url" in search.attributes:
        assert str(search.attributes["http.url"]).endswith(SEARCH)
    # A path no route matched keeps its shape, the token masked.
    [unmatched] = [s for s in server if any("/no/such/path" in str(s.attributes.get(k)) for k in paths)]
    for key in paths:
        assert unmatched.attributes[key] == "/applications/{token}/no/such/path"
    # Captured headers that carry a path are redacted by the instrumentation (a 201's Location).
    location = "http.response.header.location"
    locations = [list(s.attributes[location]) for s in server if location in s.attributes]
    assert locations and all(value == ["[REDACTED]"] for value in locations)
    assert any(list(s.attributes.get("http.request.header.referer", [])) == ["[REDACTED]"] for s in server)
