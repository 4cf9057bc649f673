"""Logs: one JSON line per request and per worker batch, the level from CHATD_LOG_LEVEL, the
settings at start with their secrets masked."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Iterator

import orjson
import pytest

from chatd import logs
from chatd.settings import Settings


@pytest.fixture
def access_lines() -> Iterator[io.BytesIO]:
    """The access log, written to memory for the test."""
    saved = (logs.ACCESS.enabled, logs.ACCESS.stream)
    stream = io.BytesIO()
    logs.ACCESS.enabled, logs.ACCESS.stream = True, stream
    try:
        yield stream
    finally:
        logs.ACCESS.flush()
        logs.ACCESS.enabled, logs.ACCESS.stream = saved


def _lines(stream: io.BytesIO) -> list[dict[str, object]]:
    logs.ACCESS.flush()
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


async def test_one_json_line_per_request_names_the_application_never_the_token(api, access_lines, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    token = await api.create_application()
    app = await api.get_json(f"/applications/{token}")
    # Creating the chat takes a known 0.2 s more: its line's duration must count it, in milliseconds.
    accept = api.service.acceptor.accept

    async def slow_accept(*args, **kwargs):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.2)
        return await accept(*args, **kwargs)

    monkeypatch.setattr(api.service.acceptor, "accept", slow_accept)
    started = time.perf_counter()
    response = await api.client.post(f"/applications/{token}/chats", headers={"X-Request-Id": "req-42"})
    client_ms = (time.perf_counter() - started) * 1000
    monkeypatch.undo()
    assert response.status == 201
    missing = await api.client.get("/applications/no-such-token/chats/1")
    assert missing.status == 404

    lines = _lines(access_lines)
    assert len(lines) == 4
    assert token not in access_lines.getvalue().decode()
    create_chat = lines[2]
    assert create_chat["method"] == "POST"
    assert create_chat["route"] == "/applications/{token}/chats"
    assert create_chat["status"] == 201
    assert create_chat["request_id"] == "req-42"
    assert create_chat["application_id"] == app["id"]
    # At least the 0.2 s (less a timer's resolution), at most what the client waited.
    assert 190 <= create_chat["duration_ms"] <= client_ms
    assert create_chat["level"] == "INFO" and create_chat["message"] == "request"
    assert lines[0]["application_id"] is None  # POST /applications: no application yet
    assert lines[3]["status"] == 404 and lines[3]["application_id"] is None
    # Every line has a request id, the one the response carried.
    assert lines[3]["request_id"] == missing.headers["X-Request-Id"]


async def test_a_line_per_worker_batch(api, caplog, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    token = await api.create_application()
    chat = await api.create_chat(token)
    for index in range(3):
        await api.create_message(token, chat, f"message {index}")
    # Storing the messages takes a known 0.2 s more: the batch's duration must count it.
    handle = api.pipeline.messages.handle

    async def slow_handle(batch):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.2)
        return await handle(batch)

    monkeypatch.setattr(api.pipeline.messages, "handle", slow_handle)
    started = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="chatd.workers.consumer"):
        await api.settle()
    settle_ms = (time.perf_counter() - started) * 1000
    batches = [record for record in caplog.records if record.getMessage() == "batch"]
    by_topic = {record.topic: record for record in batches}  # type: ignore[attr-defined]
    assert set(by_topic) == {"chats", "messages", "index"}
    messages = by_topic["messages"]
    assert (messages.size, messages.outcome, messages.done, messages.retried, messages.dead) == (3, "done", 3, 0, 0)  # type: ignore[attr-defined]
    assert 190 <= messages.duration_ms <= settle_ms  # type: ignore[attr-defined]


def test_the_log_level_comes_from_chatd_log_level() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logs.ACCESS.enabled)
    try:
        logs.configure(Settings.from_env({"CHATD_LOG_LEVEL": "warning"}).log_level)
        assert root.level == logging.WARNING and not logs.ACCESS.enabled
        logs.configure(Settings.from_env({}).log_level)
        assert root.level == logging.INFO and logs.ACCESS.enabled
    finally:
        root.handlers[:], _, logs.ACCESS.enabled = saved
        root.setLevel(saved[1])


def test_settings_are_logged_with_their_secrets_masked() -> None:
    settings = Settings(
        database_url="mysql://chatd:db-password@db:3306/chatd",
        amqp_url="amqp://guest:amqp-password@mq:5672/",
        redis_url="redis://:redis-password@redis:6379/0",
        elasticsearch_url="http://es:9200",
        admin_token="admin-secret",
    )
    masked = logs.masked_settings(settings)
    text = orjson.dumps(masked).decode()
    for secret in ("db-password", "amqp-password", "redis-password", "admin-secret"):
        assert secret not in text
    assert masked["database_url"] == "mysql://chatd:***@db:3306/chatd"
    assert masked["admin_token"] == "***"
    assert masked["elasticsearch_url"] == "http://es:9200"
    assert masked["worker_batch_size"] == settings.worker_batch_size


def test_every_url_of_a_cluster_list_is_masked() -> None:
    settings = Settings(
        amqp_url="amqp://chatd:pw-one@mq1:5672/,amqp://chatd:pw-two@mq2:5672/,amqp://chatd:pw-three@mq3:5672/",
        elasticsearch_url="http://elastic:es-pw@es1:9200,http://es2:9200",
        redis_url="redis+sentinel://s1:26379,s2:26379,s3:26379/chatd/0",
    )
    masked = logs.masked_settings(settings)
    text = orjson.dumps(masked).decode()
    for secret in ("pw-one", "pw-two", "pw-three", "es-pw"):
        assert secret not in text
    assert masked["amqp_url"] == "amqp://chatd:***@mq1:5672/,amqp://chatd:***@mq2:5672/,amqp://chatd:***@mq3:5672/"
    assert masked["elasticsearch_url"] == "http://elastic:***@es1:9200,http://es2:9200"


async def test_an_internal_error_is_logged_with_the_route_never_the_token(api, caplog, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    token = await api.create_application()

    async def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(api.service, "chat", broken)
    with caplog.at_level(logging.ERROR, logger="chatd.handlers.middleware"):
        response = await api.client.get(f"/applications/{token}/chats/1")
    assert response.status == 500
    [record] = [r for r in caplog.records if "failed" in r.getMessage()]
    assert "/applications/{token}/chats/{chat}" in record.getMessage()
    assert token not in caplog.text
