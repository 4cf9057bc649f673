"""The Store contract, on SQLite and on MySQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from chatd.domain import NumberScope
from chatd.numbering import NumberRequest, Taken
from chatd.ports import Backends
from tests.factories import WHEN, chat_job, message_job

NOW = WHEN.timestamp()  # idempotency records expire in seconds since the epoch


@pytest.fixture
def ports() -> tuple[str, ...]:
    """Only the store on the real servers: nothing else is created for these tests."""
    return ("store",)


async def test_applications_round_trip(backends: Backends) -> None:
    store = backends.store
    created = await store.create_application("tok-1", "First", WHEN)
    assert (created.token, created.name, created.chats_count, created.created_at) == ("tok-1", "First", 0, WHEN)
    assert await store.get_application("tok-1") == created
    assert await store.get_application("missing") is None
    renamed = await store.rename_application(created.id, "Renamed")
    assert renamed is not None and renamed.name == "Renamed" and renamed.id == created.id
    assert await store.rename_application(created.id + 1000, "x") is None


async def test_rotating_and_revoking_tokens(backends: Backends) -> None:
    store = backends.store
    created = await store.create_application("tok-a", "Rotating", WHEN)
    later = WHEN + timedelta(days=1)
    rotated = await store.rotate_token("tok-a", "tok-b", later)
    assert rotated is not None
    assert (rotated.application.id, rotated.application.token, rotated.superseded, rotated.revoked) == (
        created.id, "tok-b", "tok-a", None,
    )  # fmt: skip
    # Found by either token, each answered with itself; the previous one with its expiry.
    current = await store.get_application("tok-b")
    previous = await store.get_application("tok-a")
    assert current is not None and (current.id, current.token, current.token_expires_at) == (created.id, "tok-b", None)
    assert previous is not None and (previous.id, previous.token, previous.token_expires_at) == (
        created.id, "tok-a", later,
    )  # fmt: skip
    assert [app.token for app in (await store.list_applications(1, 10)).items] == ["tok-b"]
    # Only the current token rotates; a second rotation revokes the first previous token.
    assert await store.rotate_token("tok-a", "tok-x", later) is None
    again = await store.rotate_token("tok-b", "tok-c", None)  # no grace: revoked at once
    assert again is not None and (again.superseded, again.revoked) == ("tok-b", "tok-a")
    assert await store.get_application("tok-a") is None and await store.get_application("tok-b") is None
    third = await store.rotate_token("tok-c", "tok-d", later)
    assert third is not None and third.revoked is None
    assert await store.revoke_previous_token("tok-c") is None  # not the current token
    assert await store.revoke_previous_token("tok-d") == (created.id, "tok-c")
    assert await store.get_application("tok-c") is None
    assert await store.revoke_previous_token("tok-d") == (created.id, None)


async def test_applications_page(backends: Backends) -> None:
    for index in range(5):
        await backends.store.create_application(f"tok-{index}", f"App {index}", WHEN)
    page = await backends.store.list_applications(2, 2)
    assert [app.name for app in page.items] == ["App 2", "App 3"]
    assert (page.total, page.total_pages) == (5, 3)


async def test_save_chats_is_idempotent_and_counts_once(backends: Backends) -> None:
    store = backends.store
    app = await store.create_application("tok", "App", WHEN)
    await store.save_chats([chat_job(app.id, 1), chat_job(app.id, 2)])
    await store.save_chats([chat_job(app.id, 2), chat_job(app.id, 3), chat_job(app.id, 3)])
    folded = await store.reconcile_counts()
    assert folded.application_tokens == ["tok"]
    assert (await store.get_application("tok")).chats_count == 3  # type: ignore[union-attr]
    page = await store.list_chats(app.id, 1, 10)
    assert [chat.number for chat in page.items] == [1, 2, 3]
    assert (await store.get_chat(app.id, 2)).created_at == WHEN  # type: ignore[union-attr]
    assert await store.get_chat(app.id, 9) is None


async def test_save_messages_creates_missing_chat_and_returns_every_stored_version(backends: Backends) -> None:
    store = backends.store
    app = await store.create_application("tok", "App", WHEN)
    first = await store.save_messages([message_job(app.id, 1, 1, "hello"), message_job(app.id, 1, 2, "world")])
    assert [(d.message_number, d.content, d.revision) for d in first] == [(1, "hello", 1), (2, "world", 1)]
    # A re-delivery with other content changes nothing and still returns the stored version.
    again = await store.save_messages([message_job(app.id, 1, 1, "changed"), message_job(app.id, 1, 3, "new")])
    assert [(d.message_number, d.content) for d in again] == [(1, "hello"), (3, "new")]
    await store.reconcile_counts()
    chat = await store.get_chat(app.id, 1)
    assert chat is not None and chat.messages_count == 3
    assert (await store.get_application("tok")).chats_count == 1  # type: ignore[union-attr]
    await store.save_chats([chat_job(app.id, 1)])  # the chat job arriving late adds nothing
    await store.reconcile_counts()
    assert (await store.get_application("tok")).chats_count == 1  # type: ignore[union-attr]


async def test_save_messages_skips_unknown_applications(backends: Backends) -> None:
    app = await backends.store.create_application("tok", "App", WHEN)
    documents = await backends.store.save_messages([message_job(app.id, 1, 1), message_job(app.id + 999, 1, 1)])
    assert [(d.application_id, d.message_number) for d in documents] == [(app.id, 1)]


async def test_messages_read_page_and_edit(backends: Backends) -> None:
    store = backends.store
    app = await store.create_application("tok", "App", WHEN)
    await store.save_messages([message_job(app.id, 1, n, f"message {n}") for n in range(1, 6)])
    page = await store.list_messages(app.id, 1, 2, 2)
    assert [m.number for m in page.items] == [3, 4] and page.total == 5
    assert (await store.list_messages(app.id, 7, 1, 2)).total == 0
    message = await store.get_message(app.id, 1, 4)
    assert message is not None and message.content == "message 4" and message.created_at == WHEN
    later = WHEN.replace(minute=45)
    document = await store.update_message(app.id, 1, 4, "edited", later)
    assert document is not None and (document.content, document.revision) == ("edited", 2)
    edited = await store.get_message(app.id, 1, 4)
    assert edited is not None and (edited.content, edited.updated_at, edited.created_at) == ("edited", later, WHEN)
    assert await store.update_message(app.id, 1, 99, "x", later) is None


async def test_unicode_content_round_trips(backends: Backends) -> None:
    app = await backends.store.create_application("tok", "Ünïcode 🚀", WHEN)
    text = "emoji 🎉, Arabic مرحبا, CJK 你好, combining é"
    await backends.store.save_messages([message_job(app.id, 1, 1, text)])
    assert (await backends.store.get_message(app.id, 1, 1)).content == text  # type: ignore[union-attr]
    assert (await backends.store.get_application("tok")).name == "Ünïcode 🚀"  # type: ignore[union-attr]


async def test_take_numbers_counts_each_scope_from_one(backends: Backends) -> None:
    store = backends.store
    chats, chat_1, chat_2 = NumberScope(1), NumberScope(1, 1), NumberScope(1, 2)
    requests = [NumberRequest(scope) for scope in (chats, chat_1, chat_1, chat_2, chat_1)]
    taken = await store.take_numbers(requests, NOW, 60)
    assert [answer.number for answer in taken] == [1, 1, 2, 1, 3]
    assert not any(answer.replayed or answer.key_reused for answer in taken)
    assert [answer.number for answer in await store.take_numbers([NumberRequest(chat_1)], NOW, 60)] == [4]
    assert (await store.last_number(chat_1), await store.last_number(chat_2)) == (4, 1)
    assert await store.last_number(NumberScope(2, 1)) == 0


async def test_take_numbers_records_keys_and_replays_them(backends: Backends) -> None:
    store = backends.store
    chat = NumberScope(1, 1)
    first = NumberRequest(chat, "key", "message:1:aaa")
    taken = await store.take_numbers([first, NumberRequest(chat), first], NOW, 60)
    # The key's second request in one group replays the first's number; it takes none.
    assert taken == [Taken(1), Taken(2), Taken(1, replayed=True)]
    again = await store.take_numbers([first, NumberRequest(chat, "key", "message:1:bbb")], NOW + 30, 60)
    assert again == [Taken(1, replayed=True), Taken(0, key_reused=True)]
    # Keys are per application: another application's "key" is another key.
    assert await store.take_numbers([NumberRequest(NumberScope(2, 1), "key", "x")], NOW, 60) == [Taken(1)]
    assert await store.last_number(chat) == 2


async def test_an_expired_key_is_recorded_anew_and_swept(backends: Backends) -> None:
    store = backends.store
    chat = NumberScope(1, 1)
    assert await store.take_numbers([NumberRequest(chat, "old", "f")], NOW, 60) == [Taken(1)]
    assert await store.take_numbers([NumberRequest(chat, "swept", "f")], NOW, 60) == [Taken(2)]
    later = NOW + 61
    assert await store.take_numbers([NumberRequest(chat, "old", "g")], later, 60) == [Taken(3)]
    assert await store.forget_idempotency_keys(later) == 1  # "swept"; "old" was recorded anew
    assert await store.take_numbers([NumberRequest(chat, "old", "g")], later, 60) == [Taken(3, replayed=True)]
    assert await store.take_numbers([NumberRequest(chat, "swept", "f")], later, 60) == [Taken(4)]


async def test_concurrent_groups_with_one_key_take_one_number(backends: Backends) -> None:
    store = backends.store
    chat = NumberScope(1, 1)
    groups = [[NumberRequest(chat, "same", "f"), NumberRequest(chat)] for _ in range(8)]
    results = await asyncio.gather(*(store.take_numbers(group, NOW, 60) for group in groups))
    keyed = [taken[0] for taken in results]
    assert sum(1 for answer in keyed if not answer.replayed) == 1
    assert {answer.number for answer in keyed} == {keyed[0].number}
    numbers = [answer.number for taken in results for answer in taken if not answer.replayed]
    assert sorted(numbers) == list(range(1, 10))  # 8 keyless numbers and the key's one, no gap


async def test_concurrent_reconcilers_apply_each_delta_once(backends: Backends) -> None:
    store = backends.store
    app = await store.create_application("tok", "App", WHEN)
    for chat in range(1, 21):
        await store.save_messages([message_job(app.id, chat, n) for n in range(1, 4)])
    await asyncio.gather(*(store.reconcile_counts(limit=7) for _ in range(8)))
    while (await store.reconcile_counts(limit=7)).deltas:
        pass
    assert (await store.get_application("tok")).chats_count == 20  # type: ignore[union-attr]
    counts = [chat.messages_count for chat in (await store.list_chats(app.id, 1, 100)).items]
    assert counts == [3] * 20


async def test_recount_all_repairs_counts(backends: Backends) -> None:
    store = backends.store
    app = await store.create_application("tok", "App", WHEN)
    await store.save_messages([message_job(app.id, 1, n) for n in range(1, 4)])
    await store.recount_all()
    assert (await store.reconcile_counts()).deltas == 0
    assert (await store.get_chat(app.id, 1)).messages_count == 3  # type: ignore[union-attr]


async def test_migrate_twice_is_a_no_op(backends: Backends) -> None:
    assert await backends.store.migrate() == []


async def test_documents_after_walks_every_message_once(backends: Backends) -> None:
    store = backends.store
    app = await store.create_application("tok", "App", WHEN)
    await store.save_messages([message_job(app.id, chat, n, f"m {chat}.{n}") for chat in (1, 2) for n in (1, 2, 3)])
    await store.update_message(app.id, 2, 3, "edited", WHEN)
    seen, cursor = [], 0
    while True:
        cursor, documents = await store.documents_after(cursor, 4)
        if not documents:
            break
        assert len(documents) <= 4
        seen += documents
    assert sorted((d.chat_number, d.message_number) for d in seen) == [(c, n) for c in (1, 2) for n in (1, 2, 3)]
    edited = next(d for d in seen if (d.chat_number, d.message_number) == (2, 3))
    assert (edited.content, edited.revision, edited.application_id) == ("edited", 2, app.id)


async def test_keyset_pages_of_chats_and_messages(backends: Backends) -> None:
    store = backends.store
    app = await store.create_application("tok", "App", WHEN)
    other = await store.create_application("tok-2", "Other", WHEN)
    await store.save_chats([chat_job(app.id, n) for n in (1, 2, 4, 7)] + [chat_job(other.id, 3)])
    assert [c.number for c in await store.list_chats_after(app.id, 0, 2)] == [1, 2]
    assert [c.number for c in await store.list_chats_after(app.id, 2, 2)] == [4, 7]
    assert [c.number for c in await store.list_chats_after(app.id, 3, 10)] == [4, 7]
    assert await store.list_chats_after(app.id, 7, 10) == []
    await store.save_messages([message_job(app.id, 1, n, f"m{n}") for n in (1, 2, 3, 5, 8)])
    await store.save_messages([message_job(app.id, 2, 4, "elsewhere"), message_job(other.id, 1, 4, "other app")])
    page = await store.list_messages_after(app.id, 1, 2, 2)
    assert [(m.number, m.content) for m in page] == [(3, "m3"), (5, "m5")]
    assert page[0].created_at == WHEN
    assert [m.number for m in await store.list_messages_after(app.id, 1, 5, 10)] == [8]
    assert await store.list_messages_after(app.id, 1, 8, 10) == []
    assert await store.list_messages_after(app.id, 9, 0, 10) == []  # unknown chat


async def test_a_store_keeps_one_identity(backends: Backends, namespace) -> None:  # type: ignore[no-untyped-def]
    first = await backends.store.identity()
    assert len(first) == 32 and await backends.store.identity() == first
    again = await namespace.open_backends()  # another process on the same store
    assert await again.store.identity() == first


async def test_count_messages_counts_every_stored_message_once(backends: Backends) -> None:
    store = backends.store
    assert await store.count_messages() == 0
    application = await store.create_application("tok-count", "Counted", WHEN)
    await store.save_chats([chat_job(application.id, 1), chat_job(application.id, 2)])
    await store.save_messages([message_job(application.id, chat, n) for chat in (1, 2) for n in range(1, 4)])
    await store.save_messages([message_job(application.id, 1, 3)])  # redelivered: stored once
    assert await store.count_messages() == 6
