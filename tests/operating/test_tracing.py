"""One trace follows a message: the POST (api), its store (worker) and its bulk index write.

In one process with the SDK's in-memory exporter, an api app and a worker app (separate roles,
sharing only the queue, as separate processes do); test_tracing_processes.py does the same
across real processes through an OTLP receiver.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from chatd import jobs, tracing
from tests.operating.spans import recorded_spans


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recorded_spans() as exporter:
        yield exporter


def _named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


async def test_a_message_is_one_trace_from_post_to_index(spans, make_api) -> None:  # type: ignore[no-untyped-def]
    api = await make_api(role="api")
    worker = await make_api(role="worker")
    token = await api.create_application()
    chat = await api.create_chat(token)
    await worker.settle()
    spans.clear()

    numbers = [await api.create_message(token, chat, f"traced {index}") for index in range(2)]
    await worker.settle()
    finished = spans.get_finished_spans()

    posts = [span for span in finished if span.kind == SpanKind.SERVER and span.attributes.get("http.method") == "POST"]
    assert len(posts) == 2
    stored = _named(finished, "chatd store messages job")
    indexed = _named(finished, "chatd index messages job")
    assert len(stored) == 2 and len(indexed) == 2
    for post in posts:
        trace_id = post.context.trace_id
        [store] = [span for span in stored if span.context.trace_id == trace_id]
        [index] = [span for span in indexed if span.context.trace_id == trace_id]
        assert store.parent is not None and store.parent.span_id == post.context.span_id
        assert index.parent is not None and index.parent.span_id == store.context.span_id
    # One batch span each for the store and the index write, linked to every message's span.
    [store_batch] = _named(finished, "chatd store messages")
    assert {link.context.trace_id for link in store_batch.links} == {post.context.trace_id for post in posts}
    assert store_batch.attributes["chatd.batch.jobs"] == 2
    # The live fan-out's announcement, within the store's batch.
    announces = _named(finished, "chatd live announce")
    assert any(span.parent is not None and span.parent.span_id == store_batch.context.span_id for span in announces)
    [index_batch] = _named(finished, "chatd index messages")
    assert {link.context.trace_id for link in index_batch.links} == {post.context.trace_id for post in posts}
    assert numbers == [1, 2]


async def test_tracing_off_adds_nothing_to_the_job(make_api) -> None:  # type: ignore[no-untyped-def]
    assert not tracing.enabled()
    api = await make_api()
    token = await api.create_application()
    chat = await api.create_chat(token)
    await api.create_message(token, chat, "untraced")
    [delivery] = await api.pipeline.backends.queue.receive(jobs.MESSAGES, 10, 5.0)
    assert b'"trace"' not in delivery.body
    await api.pipeline.backends.queue.ack(jobs.MESSAGES, [delivery])


def test_tracing_is_off_unless_the_environment_asks() -> None:
    assert not tracing.requested({})
    assert tracing.requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.requested({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert tracing.requested({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.requested({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert not tracing.requested({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
