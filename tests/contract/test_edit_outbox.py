"""The Store's edit outbox and last-edit times, on SQLite and on MySQL (issue 17, item 4).

An edit commits its outbox row and its last-edit time with the new text; the relay reads the
rows with each message as it now reads, and forgets them once relayed.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from chatd.ports import Backends
from tests.factories import WHEN, message_job


@pytest.fixture
def ports() -> tuple[str, ...]:
    """Only the store on the real servers."""
    return ("store",)


async def test_an_edit_commits_an_outbox_row_relayed_with_the_newest_text(backends: Backends) -> None:
    store = backends.store
    app = await store.create_application("tok", "App", WHEN)
    await store.save_messages([message_job(app.id, 1, n, f"message {n}") for n in (1, 2)])
    assert (await store.edits_to_relay(10)).ids == []  # storing a message is no edit
    await store.update_message(app.id, 1, 2, "first edit", WHEN + timedelta(seconds=1))
    await store.update_message(app.id, 1, 2, "second edit", WHEN + timedelta(seconds=2))
    await store.update_message(app.id, 1, 1, "other edit", WHEN + timedelta(seconds=3))
    pending = await store.edits_to_relay(10)
    assert len(pending.ids) == 3
    # Each message once, as it reads now: the newest text and revision, whichever row named it.
    relayed = {(e.document.message_number, e.document.content, e.document.revision) for e in pending.messages}
    assert relayed == {(2, "second edit", 3), (1, "other edit", 2)}
    assert {e.updated_at for e in pending.messages} == {WHEN + timedelta(seconds=2), WHEN + timedelta(seconds=3)}
    assert all(e.document.application_id == app.id and e.document.chat_number == 1 for e in pending.messages)

    oldest = await store.edits_to_relay(2)
    assert oldest.ids == pending.ids[:2]  # oldest first, at most the limit
    await store.forget_relayed_edits(oldest.ids)
    await store.forget_relayed_edits(oldest.ids)  # already gone: nothing happens
    left = await store.edits_to_relay(10)
    assert left.ids == pending.ids[2:] and [e.document.content for e in left.messages] == ["other edit"]
    await store.forget_relayed_edits(left.ids)
    assert (await store.edits_to_relay(10)).ids == []


async def test_an_edit_of_no_message_writes_no_outbox_row(backends: Backends) -> None:
    store = backends.store
    app = await backends.store.create_application("tok", "App", WHEN)
    assert await store.update_message(app.id, 1, 7, "nothing there", WHEN) is None
    assert (await store.edits_to_relay(10)).ids == []


async def test_recent_edits_are_the_chats_edits_up_to_a_number_within_a_window(backends: Backends) -> None:
    store = backends.store
    app = await store.create_application("tok", "App", WHEN)
    other = await store.create_application("other", "Other", WHEN)
    await store.save_messages([message_job(app.id, chat, n, f"m {chat}.{n}") for chat in (1, 2) for n in range(1, 6)])
    await store.save_messages([message_job(other.id, 1, 1, "another tenant")])
    for second, number in enumerate((1, 2, 3, 4, 5), start=1):
        await store.update_message(app.id, 1, number, f"edited {number}", WHEN + timedelta(seconds=second))
    await store.update_message(app.id, 1, 2, "edited 2 again", WHEN + timedelta(seconds=10))
    await store.update_message(app.id, 2, 1, "another chat", WHEN + timedelta(seconds=10))
    await store.update_message(other.id, 1, 1, "another tenant's edit", WHEN + timedelta(seconds=10))

    since = WHEN + timedelta(seconds=2)  # message 1's only edit is older
    edits = await store.recent_edits(app.id, 1, 4, since, 10)  # message 5 is above the resume point
    assert [(e.document.message_number, e.document.content, e.document.revision) for e in edits] == [
        (2, "edited 2 again", 3),
        (3, "edited 3", 2),
        (4, "edited 4", 2),
    ]
    assert edits[0].updated_at == WHEN + timedelta(seconds=10)
    # The most recently edited within the limit, still given by number.
    latest = await store.recent_edits(app.id, 1, 4, since, 2)
    assert [e.document.message_number for e in latest] == [2, 4]
    assert await store.recent_edits(app.id, 9, 4, since, 10) == []  # unknown chat


async def test_a_cursor_page_carries_each_messages_revision(backends: Backends) -> None:
    store = backends.store
    app = await store.create_application("tok", "App", WHEN)
    await store.save_messages([message_job(app.id, 1, n) for n in (1, 2)])
    await store.update_message(app.id, 1, 2, "edited", WHEN)
    assert [m.revision for m in await store.list_messages_after(app.id, 1, 0, 10)] == [1, 2]
