"""Numbers under concurrency, and whatever Redis forgets: the store is the only source of numbers."""

from __future__ import annotations

import asyncio

from tests.conftest import Api


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


async def test_two_api_processes_never_hand_out_a_number_twice(api: Api) -> None:
    """Two services on one store (two api processes) interleave on one chat: 1..n, each once."""
    from chatd.service import ChatService

    token = await api.create_application()
    chat = await api.create_chat(token)
    other = ChatService(api.service.backends)
    sends = [(api.service if n % 2 else other).create_message(token, chat, f"m{n}") for n in range(300)]
    numbers = await asyncio.gather(*sends)
    assert sorted(numbers) == list(range(1, 301))


async def test_a_redis_that_forgets_everything_changes_no_number(api: Api) -> None:
    """The cache (Redis on the real set) emptied between two creations: numbering goes on."""
    token = await api.create_application()
    chat = await api.create_chat(token)
    before = [await api.create_message(token, chat, f"before {n}", idempotency_key=f"k{n}") for n in range(5)]
    destroy = getattr(api.service.backends.cache, "destroy", None)
    if destroy is not None:
        await destroy()
    after = [await api.create_message(token, chat, f"after {n}") for n in range(5)]
    assert before + after == list(range(1, 11))
    # Keys are in the store: a retry after the wipe still gets its first number.
    assert await api.create_message(token, chat, "before 3", idempotency_key="k3") == 4


async def test_pending_numbers_are_known_from_the_store(api: Api) -> None:
    """A number handed out and not stored yet answers 404 pending; one never handed out, not found."""
    token = await api.create_application()
    chat = await api.create_chat(token)
    await api.settle()
    number = await api.create_message(token, chat, "queued")  # no worker runs until settle()
    pending = await api.client.get(f"/applications/{token}/chats/{chat}/messages/{number}")
    assert pending.status == 404
    assert (await pending.json())["error"]["code"] == "pending"
    unknown = await api.client.get(f"/applications/{token}/chats/{chat}/messages/{number + 1}")
    assert (await unknown.json())["error"]["code"] == "message_not_found"
