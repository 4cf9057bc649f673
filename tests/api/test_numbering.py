"""Numbers under concurrency, and after the counters lose their state."""

from __future__ import annotations

import asyncio

from chatd.domain import NumberScope
from tests.conftest import Api
from tests.contract.test_counters import wipe_counters


async def test_concurrent_chat_creations_get_1_to_n(api: Api) -> None:
    token = await api.create_application()
    numbers = await asyncio.gather(*(api.create_chat(token) for _ in range(500)))
    assert sorted(numbers) == list(range(1, 501))
    await api.settle()
    assert (await api.get_json(f"/applications/{token}"))["chats_count"] == 500
    assert (await api.get_json(f"/applications/{token}/chats?per_page=1"))["meta"]["total"] == 500


async def test_concurrent_messages_across_chats_get_1_to_n_per_chat(api: Api) -> None:
    token = await api.create_application()
    chats = [await api.create_chat(token) for _ in range(5)]
    sends = [(chat, f"message {i} in {chat}") for i in range(100) for chat in chats]
    numbers = await asyncio.gather(*(api.create_message(token, chat, text) for chat, text in sends))
    per_chat: dict[int, list[int]] = {chat: [] for chat in chats}
    for (chat, _), number in zip(sends, numbers):
        per_chat[chat].append(number)
    assert all(sorted(got) == list(range(1, 101)) for got in per_chat.values())
    await api.settle()
    for chat in chats:
        assert (await api.get_json(f"/applications/{token}/chats/{chat}"))["messages_count"] == 100
        listing = await api.get_json(f"/applications/{token}/chats/{chat}/messages?per_page=100")
        assert [m["number"] for m in listing["data"]] == list(range(1, 101))
        found = await api.get_json(f"/applications/{token}/chats/{chat}/messages/search?query=message&per_page=100")
        assert found["total"] == 100


async def test_lost_counters_never_reissue_a_number(api: Api) -> None:
    """A counter that restarts empty resumes above every number handed out, stored or still queued."""
    token = await api.create_application()
    chat = await api.create_chat(token)
    await api.settle()
    handed = [await api.create_message(token, chat, f"before {n}") for n in range(5)]  # queued, not stored
    await wipe_counters(api.service.backends)
    api.service.acceptor.forget_reservations()  # a fresh api process knows nothing either
    after = [await api.create_message(token, chat, f"after {n}") for n in range(5)]
    assert not set(handed) & set(after)
    assert min(after) > max(handed)
    await api.settle()
    listing = await api.get_json(f"/applications/{token}/chats/{chat}/messages?per_page=100")
    assert sorted(m["number"] for m in listing["data"]) == sorted(handed + after)
    assert await api.create_chat(token) > chat  # chats are numbered the same way


async def test_counters_seed_from_the_store(api: Api) -> None:
    token = await api.create_application()
    app = await api.service.application(token)
    await api.service.store.reserve_numbers(NumberScope(app.id), 40)
    assert await api.create_chat(token) == 41


async def test_counter_lost_while_reserving_drops_the_number(api: Api) -> None:
    """Another process reseeds a wiped counter before this one's reservation commits."""
    from chatd.service import ChatService

    token = await api.create_application()
    chat = await api.create_chat(token)
    service = api.service
    other = ChatService(service.backends)  # a second api process
    store = service.store
    reserve = store.reserve_numbers
    taken_by_other: list[int] = []
    wiped = False

    async def reserve_after_a_wipe(scope, upto):  # type: ignore[no-untyped-def]
        nonlocal wiped
        if not wiped:
            wiped = True
            await wipe_counters(service.backends)
            taken_by_other.append(await other.create_message(token, chat, "from the other process"))
        return await reserve(scope, upto)

    store.reserve_numbers = reserve_after_a_wipe  # type: ignore[method-assign]
    try:
        mine = await service.create_message(token, chat, "from this process")
    finally:
        store.reserve_numbers = reserve  # type: ignore[method-assign]
    assert mine != taken_by_other[0]


async def test_concurrent_requests_share_reservations(api: Api) -> None:
    """A burst on one chat writes the store once per block of numbers, not once per request."""
    token = await api.create_application()
    chat = await api.create_chat(token)
    store = api.service.store
    reserve = store.reserve_numbers
    calls = 0

    async def counted(scope, upto):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return await reserve(scope, upto)

    store.reserve_numbers = counted  # type: ignore[method-assign]
    try:
        numbers = await asyncio.gather(*(api.service.create_message(token, chat, "burst") for _ in range(300)))
    finally:
        store.reserve_numbers = reserve  # type: ignore[method-assign]
    assert sorted(numbers) == list(range(1, 301))
    assert calls <= 300 // api.service.acceptor.number_block + 3, calls
