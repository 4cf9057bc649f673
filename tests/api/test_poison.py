"""A job that can never be processed is set aside; the jobs around it are not held up."""

from __future__ import annotations

import pytest

from chatd import jobs
from chatd.workers.pipeline import JobsDeadLettered
from tests.conftest import Api


@pytest.mark.parametrize("backend_set", ["embedded"])  # the RabbitMQ dead-letter queue: tests/backends
async def test_poison_jobs_go_to_the_dead_letters(make_api) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api()
    token = await api.create_application()
    chat = await api.create_chat(token)
    await api.service.queue.publish(jobs.MESSAGES, [b"not json", b'{"application_id": "x"}'])
    await api.create_message(token, chat, "after the poison")
    await api.settle(expect_dead_letters=True)
    listing = await api.get_json(f"/applications/{token}/chats/{chat}/messages")
    assert [m["content"] for m in listing["data"]] == ["after the poison"]
    dead = await api.service.queue.dead_letters(jobs.MESSAGES)  # type: ignore[attr-defined]
    assert dead == [b"not json", b'{"application_id": "x"}']


@pytest.mark.parametrize("backend_set", ["embedded"])
async def test_driving_the_pipeline_fails_loudly_on_unexpected_dead_letters(make_api) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api()
    await api.service.queue.publish(jobs.CHATS, [b"not json"])
    with pytest.raises(JobsDeadLettered) as raised:
        await api.settle()
    assert raised.value.counts == {jobs.CHATS: 1}
    await api.settle()  # what went to the dead letters before this call is not counted again
