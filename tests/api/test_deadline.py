"""Every request is answered within the request deadline: 201, or 503 with Retry-After; never a hang."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.conftest import Api
from tests.live.helpers import SseStream, numbers

DEADLINE = 0.5


def hang(service: Any, name: str) -> asyncio.Event:
    """Make ``service.store.<name>`` wait until the returned event is set (a partitioned database)."""
    released = asyncio.Event()
    original = getattr(service.store, name)

    async def waits(*args: Any, **kwargs: Any) -> Any:
        await released.wait()
        return await original(*args, **kwargs)

    setattr(service.store, name, waits)
    return released


async def timed_post(api: Api, path: str, **kwargs: Any) -> tuple[int, dict[str, Any], dict[str, str], float]:
    started = time.monotonic()
    response = await api.client.post(path, **kwargs)
    return response.status, await response.json(), dict(response.headers), time.monotonic() - started


async def test_a_creation_whose_store_does_not_answer_gets_503_in_time(make_api) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(request_deadline_seconds=DEADLINE)
    token = await api.create_application()
    chat = await api.create_chat(token)
    released = hang(api.service, "take_numbers")
    try:
        status, body, headers, seconds = await timed_post(
            api, f"/applications/{token}/chats/{chat}/messages", json={"content": "into the void"}
        )
        assert status == 503 and body["error"]["code"] == "unavailable", body
        assert headers["Retry-After"] == "1"
        assert seconds < DEADLINE + 1.0
    finally:
        released.set()
    # The store is back: creations go on, and the number the timed-out group may have taken is never reused.
    number = await api.create_message(token, chat, "after")
    assert number >= 1
    assert await api.create_message(token, chat, "after again") == number + 1


async def test_a_read_whose_store_does_not_answer_gets_503_in_time(make_api) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(request_deadline_seconds=DEADLINE)
    token = await api.create_application()
    chat = await api.create_chat(token)
    await api.create_message(token, chat, "stored")
    await api.settle()
    released = hang(api.service, "list_messages")
    try:
        started = time.monotonic()
        response = await api.client.get(f"/applications/{token}/chats/{chat}/messages")
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert (await response.json())["error"]["code"] == "unavailable"
        assert time.monotonic() - started < DEADLINE + 1.0
    finally:
        released.set()


async def test_a_live_stream_outlives_the_deadline(make_api) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(request_deadline_seconds=DEADLINE)
    token = await api.create_application()
    chat = await api.create_chat(token)
    stream = SseStream(await api.client.get(f"/applications/{token}/chats/{chat}/events"))
    await asyncio.sleep(DEADLINE * 3)  # the stream must still be open after its deadline passed
    posted = await api.create_message(token, chat, "late but live")
    await api.settle()
    assert numbers(await stream.take(1)) == [posted]
