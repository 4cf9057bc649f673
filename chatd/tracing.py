"""OpenTelemetry tracing of a message's way: the POST, the store, the search index.

Off unless the standard ``OTEL_*`` variables ask for it (an OTLP endpoint, or
``OTEL_TRACES_EXPORTER``); ``OTEL_SDK_DISABLED=true`` keeps it off. While it is off, every
function here returns at its first line and the SDK is never imported, so the request path pays
one global read per creation.

A trace follows one message across processes: the api records the W3C ``traceparent`` of its
request span in the job (``MessageJob.trace``, carried in the job's own encoding, which follows
it through envelopes, retries and splits); the message consumer stores a whole batch under one
span that *links* to every message's trace, and gives each message a short child span in that
message's own trace; the indexer does the same for its bulk write.

No span holds a tenant's token: the request's path is in its URL, so ``install`` adds
``chatd.tracing_paths.RouteOnlyPaths``, which writes the route template over every path
attribute of a span as it starts, and has the instrumentation redact captured headers that
carry a path (``Location``, ``Referer``) or a credential. chatd makes no traced client requests.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger(__name__)

# The SDK's tracer while tracing is on; None (the default) means off.
_tracer: Any = None
_middleware: Any = None
_TRACEPARENT = "traceparent"


def requested(environ: dict[str, str] | None = None) -> bool:
    """Whether the ``OTEL_*`` environment asks for traces to be exported."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure(role: str) -> bool:
    """Set tracing up from the environment (OTLP over HTTP, or the console); True if it is on.

    The exporter, batching and sampling read their own ``OTEL_*`` variables. The service name is
    ``OTEL_SERVICE_NAME``, else ``chatd-<role>``.
    """
    if not requested():
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    defaults = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": f"chatd-{role}"}
    provider = TracerProvider(resource=Resource.create(defaults))
    exporter: SpanExporter
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    logger.info("tracing on: spans exported by %s", type(exporter).__name__)
    return True


def install(provider: Any) -> None:
    """Trace with ``provider`` (a configured SDK TracerProvider), HTTP server spans included,
    their paths replaced by route templates.

    Must run before ``create_app``, which adds ``middlewares()`` to the application.
    """
    global _tracer, _middleware
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor, create_aiohttp_middleware

    from chatd.tracing_paths import RouteOnlyPaths, redact_sensitive_headers

    provider.add_span_processor(RouteOnlyPaths())
    redact_sensitive_headers(os.environ)
    instrumentor = AioHttpServerInstrumentor()
    with warnings.catch_warnings():
        # instrument() sets up the middleware's meters and settings (OTEL_PYTHON_AIOHTTP_SERVER_*)
        # and swaps in a subclass of web.Application, which aiohttp deprecates: chatd puts the
        # instrumentation's middleware into its own application instead, and swaps the class back.
        warnings.simplefilter("ignore", DeprecationWarning)
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=provider)
    instrumentor.uninstrument()
    _middleware = create_aiohttp_middleware(tracer_provider=provider)
    _tracer = provider.get_tracer("chatd")


def uninstall() -> None:
    """Tracing off again (tests)."""
    global _tracer, _middleware
    _tracer = _middleware = None


def enabled() -> bool:
    return _tracer is not None


def middlewares() -> list[Any]:
    """The HTTP server span middleware while tracing is on (first: it times everything else)."""
    return [] if _middleware is None else [_middleware]


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span (the request's), or None when tracing is off."""
    if _tracer is None:
        return None
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get(_TRACEPARENT)


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[None]:
    """A span around a step, a child of the current one (nothing at all when tracing is off)."""
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(name, attributes=attributes):
        yield


@contextmanager
def batch(name: str, traces: Sequence[str | None], **attributes: Any) -> Iterator[list[str | None]]:
    """Run a batch's work under one span linked to each job's trace, and one short span per job
    in the job's own trace (its parent the span that queued it).

    Yields, per job, the traceparent of its span, for the next hop (``None`` when off, or for a
    job that came without a trace).
    """
    if _tracer is None or not any(traces):
        yield [None] * len(traces)
        return
    from opentelemetry import trace
    from opentelemetry.propagate import extract, inject

    parents = [extract({_TRACEPARENT: tp}) if tp else None for tp in traces]
    links = [trace.Link(trace.get_current_span(parent).get_span_context()) for parent in parents if parent is not None]
    with _tracer.start_as_current_span(name, links=links, attributes={"chatd.batch.jobs": len(traces), **attributes}):
        batch_link = [trace.Link(trace.get_current_span().get_span_context())]
        spans = [
            _tracer.start_span(name + " job", context=parent, links=batch_link) if parent is not None else None
            for parent in parents
        ]
        onward: list[str | None] = []
        for span in spans:
            carrier: dict[str, str] = {}
            if span is not None:
                inject(carrier, context=trace.set_span_in_context(span))
            onward.append(carrier.get(_TRACEPARENT))
        try:
            yield onward
        finally:
            for span in spans:
                if span is not None:
                    span.end()
