"""Chats per application have a ceiling (CHATD_MAX_CHATS_PER_APPLICATION), taken in the store's
numbering transaction, so no burst from any number of api processes passes it. Both backend sets."""

from __future__ import annotations

import asyncio

import pytest

from chatd.domain import NumberScope
from chatd.errors import Forbidden
from chatd.numbering import NumberRequest, Taken
from chatd.ports import Backends
from chatd.service import ChatService
from tests.conftest import Api


async def refused(response) -> str:  # type: ignore[no-untyped-def]
    assert response.status == 403, await response.text()
    error = (await response.json())["error"]
    assert error["code"] == "chat_limit_reached"
    return str(error["message"])


async def test_chats_stop_at_the_ceiling_with_a_clear_403(make_api) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(max_chats_per_application=3)
    token = await api.create_application()
    assert [await api.create_chat(token) for _ in range(3)] == [1, 2, 3]
    assert "3 chats" in await refused(await api.client.post(f"/applications/{token}/chats"))
    assert "3 chats" in await refused(await api.client.post(f"/applications/{token}/chats"))
    # The refused creations took no number: chat 4 was never handed out.
    missing = await api.client.get(f"/applications/{token}/chats/4")
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "chat_not_found"
    app_id = (await api.service.application(token)).id
    assert await api.service.store.last_number(NumberScope(app_id)) == 3
    # Messages are not limited by it, and another application has its own ceiling.
    assert await api.create_message(token, 3, "still talking") == 1
    other = await api.create_application("Other")
    assert await api.create_chat(other) == 1
    await api.settle()
    assert (await api.get_json(f"/applications/{token}"))["chats_count"] == 3
    assert (await api.get_json(f"/applications/{token}/chats"))["meta"]["total"] == 3


async def test_zero_means_no_ceiling(make_api) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(max_chats_per_application=0)
    token = await api.create_application()
    assert sorted(await asyncio.gather(*(api.create_chat(token) for _ in range(50)))) == list(range(1, 51))


async def test_a_burst_from_two_api_processes_never_passes_the_ceiling(make_api) -> None:  # type: ignore[no-untyped-def]
    """Two services on one store (two api processes), each in groups of its own, race for the last chats."""
    api: Api = await make_api(max_chats_per_application=5)
    token = await api.create_application()
    other = ChatService(api.service.backends, max_chats_per_application=5)

    async def over_http() -> int | None:
        response = await api.client.post(f"/applications/{token}/chats")
        if response.status == 403:
            await refused(response)
            return None
        assert response.status == 201, await response.text()
        return int((await response.json())["number"])

    async def in_the_other_process() -> int | None:
        try:
            return await other.create_chat(token)
        except Forbidden as error:
            assert error.code == "chat_limit_reached"
            return None

    answers = await asyncio.gather(*(over_http() if n % 2 else in_the_other_process() for n in range(60)))
    assert sorted(number for number in answers if number is not None) == [1, 2, 3, 4, 5]
    assert answers.count(None) == 55
    app_id = (await api.service.application(token)).id
    assert await api.service.store.last_number(NumberScope(app_id)) == 5
    # Nothing was burnt: a raised ceiling goes on at 6.
    raised = ChatService(api.service.backends, max_chats_per_application=6)
    assert await raised.create_chat(token) == 6
    await api.settle()
    assert (await api.get_json(f"/applications/{token}/chats?per_page=100"))["meta"]["total"] == 6


async def test_idempotency_keys_at_the_ceiling(make_api) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(max_chats_per_application=2)
    token = await api.create_application()

    async def create(key: str):  # type: ignore[no-untyped-def]
        return await api.client.post(f"/applications/{token}/chats", headers={"Idempotency-Key": key})

    assert [(await (await create(key)).json())["number"] for key in ("a", "b")] == [1, 2]
    replay = await create("a")  # a retry of a chat created before the ceiling still answers it
    assert replay.status == 201 and (await replay.json())["number"] == 1
    await refused(await create("c"))
    await refused(await create("c"))  # the refusal recorded nothing under the key...
    raised = ChatService(api.service.backends, max_chats_per_application=3)
    assert await raised.create_chat(token, idempotency_key="c") == 3  # ...so it takes a number once allowed


@pytest.mark.parametrize("ports", [("store",)])
async def test_the_store_refuses_past_a_ceiling_in_the_numbering_transaction(backends: Backends) -> None:
    store = backends.store
    chats, messages = NumberScope(41), NumberScope(41, 1)
    assert await store.take_numbers([NumberRequest(chats, ceiling=2)], 1000.0, 60.0) == [Taken(1)]
    group = [
        NumberRequest(chats, ceiling=2),
        NumberRequest(chats, "k1", "chat", ceiling=2),
        NumberRequest(chats, "k1", "chat", ceiling=2),  # the same key again in the group
        NumberRequest(messages),  # another scope, without a ceiling, in the same transaction
        NumberRequest(chats, ceiling=2),
    ]
    refused_ = Taken(0, limit_reached=True)
    assert await store.take_numbers(group, 1000.0, 60.0) == [Taken(2), refused_, refused_, Taken(1), refused_]
    assert await store.last_number(chats) == 2 and await store.last_number(messages) == 1
    # k1 was not recorded: once the ceiling allows, it takes the next number.
    assert await store.take_numbers([NumberRequest(chats, "k1", "chat", ceiling=3)], 1000.0, 60.0) == [Taken(3)]
    # A ceiling lowered below the counter refuses everything and leaves the counter where it stood.
    lowered = [NumberRequest(chats, ceiling=1), NumberRequest(chats, "k1", "chat", ceiling=1)]
    assert await store.take_numbers(lowered, 1000.0, 60.0) == [refused_, Taken(3, replayed=True)]
    assert await store.last_number(chats) == 3
    # Without a ceiling the scope goes on.
    assert await store.take_numbers([NumberRequest(chats)], 1000.0, 60.0) == [Taken(4)]
