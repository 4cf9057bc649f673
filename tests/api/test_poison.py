"""A job that can never be processed is set aside; the jobs around it are not held up."""

from __future__ import annotations

import pytest

from chatd import jobs
from tests.conftest import Api


@pytest.mark.parametrize("backend_set", ["embedded"])  # the RabbitMQ dead-letter queue: tests/backends
async def test_poison_jobs_go_to_the_dead_letters(make_api) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api()
    token = await api.create_application()
    chat = await api.create_chat(token)
    await api.service.queue.publish(jobs.MESSAGES, [b"not json", b'{"application_id": "x"}'])
    await api.create_message(token, chat, "after the poison")
    await api.settle()
    listing = await api.get_json(f"/applications/{token}/chats/{chat}/messages")
    assert [m["content"] for m in listing["data"]] == ["after the poison"]
    dead = await api.service.queue.dead_letters(jobs.MESSAGES)  # type: ignore[attr-defined]
    assert dead == [b"not json", b'{"application_id": "x"}']
