"""One trace across processes: `chatd serve --role api` and `--role worker` export their spans
over OTLP/HTTP (configured only by OTEL_* variables) to a receiver this test runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import Namespace
from tests.factories import eventually
from tests.processes import ChatdProcess, application_and_chat


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str


class Receiver:
    """An OTLP/HTTP trace receiver (protobuf), keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []

    async def export(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in message.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            attributes.get("service.name", ""),
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )


@pytest.fixture
async def receiver(aiohttp_server) -> AsyncIterator[tuple[Receiver, str]]:  # type: ignore[no-untyped-def]
    spans = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", spans.export)
    server = await aiohttp_server(app)
    yield spans, str(server.make_url("")).rstrip("/")


async def test_one_trace_spans_the_api_and_worker_processes(
    namespace: Namespace, tmp_path: Path, receiver: tuple[Receiver, str]
) -> None:
    spans, endpoint = receiver
    settings = await namespace.serving_settings(index_batch_wait_seconds=0.05)
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    processes = [ChatdProcess(settings, role, tmp_path) for role in ("api", "worker")]
    for process in processes:
        process.env.update(otel)
        await process.start()
    api = processes[0]
    try:
        async with aiohttp.ClientSession() as session:
            token, chat = await application_and_chat(session, "Traced", api.url)
            url = f"{api.url}/applications/{token}/chats/{chat}/messages"
            async with session.post(url, json={"content": "follow me"}) as response:
                assert response.status == 201

        def post_span() -> ReceivedSpan | None:
            return next(
                (
                    s
                    for s in spans.spans
                    if s.service == "chatd-api" and s.name.startswith("POST") and "messages" in s.name
                ),
                None,
            )

        async def whole_trace() -> list[ReceivedSpan]:
            post = post_span()
            if post is None:
                return []
            trace = [s for s in spans.spans if s.trace_id == post.trace_id]
            names = {(s.service, s.name) for s in trace}
            done = {("chatd-worker", "chatd store messages job"), ("chatd-worker", "chatd index messages job")}
            return trace if done <= names else []

        trace = await eventually(whole_trace, timeout=30)
        by_name = {s.name: s for s in trace}
        post = post_span()
        assert post is not None
        assert by_name["chatd store messages job"].parent_id == post.span_id
        assert by_name["chatd index messages job"].parent_id == by_name["chatd store messages job"].span_id
        for process in processes:
            assert await process.terminate() == 0
    finally:
        for process in processes:
            process.stop_quietly()
