"""Edits on live streams (issue 17, item 4), on both backend sets: the newest revision wins
whatever order the announcements arrive in, and a client that resumes is sent the edits it
missed while away (within the replay window)."""

from __future__ import annotations

import time

from chatd import keys
from chatd.live.events import LiveEvent, encode_announcement, message_created, message_updated
from chatd.live.subscriber import Subscriber
from tests.conftest import Api
from tests.factories import WHEN, document
from tests.live.helpers import Event, SseStream


async def chat_with_messages(api: Api, *contents: str) -> tuple[str, int]:
    token = await api.create_application()
    chat = await api.create_chat(token)
    for content in contents:
        await api.create_message(token, chat, content)
    await api.settle()
    return token, chat


async def edit(api: Api, token: str, chat: int, number: int, content: str) -> int:
    response = await api.client.put(f"/applications/{token}/chats/{chat}/messages/{number}", json={"content": content})
    assert response.status == 200, await response.text()
    return int((await response.json())["revision"])


async def events_until(stream: SseStream, content: str) -> list[Event]:
    """Events up to and including the ``message.created`` of ``content`` (a marker the test posts)."""
    seen: list[Event] = []
    while not (seen and seen[-1].event == "message.created" and seen[-1].data["content"] == content):
        seen.append(await stream.next())
    return seen


def updates(events: list[Event]) -> list[tuple[int, str, int]]:
    return [(e.data["number"], e.data["content"], e.data["revision"]) for e in events if e.event == "message.updated"]


async def test_two_edits_delivered_in_reverse_order_leave_the_client_on_the_newer_text(api: Api) -> None:
    token, chat = await chat_with_messages(api, "original")
    stream = SseStream(await api.client.get(f"/applications/{token}/chats/{chat}/events?after=0"))
    assert (await stream.next()).data["content"] == "original"
    fanout = api.app[keys.FANOUT]
    held: list[LiveEvent] = []
    fanout.announce = held.extend  # the edits' announcements, held back to deliver them crossed
    assert await edit(api, token, chat, 1, "older edit") == 2
    assert await edit(api, token, chat, 1, "newer edit") == 3
    del fanout.announce
    hub = api.app[keys.HUB]
    # As when two api processes announce and the later edit's announcement arrives first.
    hub.deliver(encode_announcement([held[1]]))
    hub.deliver(encode_announcement([held[0]]))
    await api.create_message(token, chat, "marker")
    await api.settle()  # the relay announces the edits again too: no newer than what was sent
    received = updates(await events_until(stream, "marker"))
    assert received == [(1, "newer edit", 3)]


async def test_a_resuming_client_gets_the_edits_made_while_it_was_away(api: Api) -> None:
    token, chat = await chat_with_messages(api, "one", "two", "three")
    path = f"/applications/{token}/chats/{chat}/events"
    away = SseStream(await api.client.get(path, params={"after": "0"}))
    assert [e.data["content"] for e in await away.take(3)] == ["one", "two", "three"]
    away.response.close()
    await edit(api, token, chat, 2, "two, edited while away")
    await edit(api, token, chat, 3, "three, edited while away")
    await edit(api, token, chat, 3, "three, edited twice")
    await api.create_message(token, chat, "four")
    await api.settle()

    back = SseStream(await api.client.get(path, headers={"Last-Event-ID": away.last_id}))
    await api.create_message(token, chat, "marker")
    await api.settle()
    received = await events_until(back, "marker")
    assert updates(received) == [(2, "two, edited while away", 2), (3, "three, edited twice", 3)]
    # An edit carries the id of the last record given before it (none of these moves it).
    assert all(e.id in ("3", "4", "5") for e in received if e.event == "message.updated")
    created = [(e.id, e.data["content"]) for e in received if e.event == "message.created"]
    assert created == [("4", "four"), ("5", "marker")]


async def test_edits_older_than_the_replay_window_or_past_its_count_are_not_replayed(make_api) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(live_edit_replay_seconds=600, live_edit_replay_events=2)
    token, chat = await chat_with_messages(api, "one", "two", "three", "four")
    path = f"/applications/{token}/chats/{chat}/events"
    for number in (1, 2, 3, 4):
        await edit(api, token, chat, number, f"{number} edited")
    await api.settle()
    hub = api.app[keys.HUB]

    counted = SseStream(await api.client.get(path, headers={"Last-Event-ID": "4"}))
    await api.create_message(token, chat, "marker")
    await api.settle()
    assert updates(await events_until(counted, "marker")) == [(3, "3 edited", 2), (4, "4 edited", 2)]

    hub.wall = lambda: time.time() + 601  # the edits are now older than the window
    late = SseStream(await api.client.get(path, headers={"Last-Event-ID": "5"}))
    await api.create_message(token, chat, "second marker")
    await api.settle()
    assert updates(await events_until(late, "second marker")) == []


async def test_a_stream_started_at_the_head_is_not_sent_old_edits(api: Api) -> None:
    token, chat = await chat_with_messages(api, "one")
    await edit(api, token, chat, 1, "edited before the stream")
    await api.settle()
    fresh = SseStream(await api.client.get(f"/applications/{token}/chats/{chat}/events"))
    await api.create_message(token, chat, "marker")
    await api.settle()
    assert updates(await events_until(fresh, "marker")) == []


def test_a_subscriber_sends_each_edit_once_and_never_an_older_one() -> None:
    subscriber = Subscriber(after=0, capacity=2)
    subscriber.give(message_created(document(1, 1, 1, "first", revision=3)))  # a replay read an edited text
    subscriber.give_update(message_updated(document(1, 1, 1, "older", revision=2), WHEN))
    subscriber.give_update(message_updated(document(1, 1, 1, "same", revision=3), WHEN))
    subscriber.give_update(message_updated(document(1, 1, 1, "newer", revision=4), WHEN))
    subscriber.give_update(message_updated(document(1, 1, 1, "newer, again", revision=4), WHEN))
    assert [(e.kind, e.content) for e in subscriber.take(10)] == [
        ("message.created", "first"),
        ("message.updated", "newer"),
    ]
    # Bounded: the revisions of its last ``capacity`` edited messages, the least recently edited forgotten.
    for number in (2, 3):
        subscriber.give_update(message_updated(document(1, 1, number, "edited", revision=2), WHEN))
    assert subscriber.revisions == {2: 2, 3: 2}
    # Edits may overfill the buffer by half; the feed, which gives while there is room, sees none.
    subscriber.give_update(message_updated(document(1, 1, 1, "newest", revision=5), WHEN))
    assert len(subscriber.buffer) == 3 and subscriber.room == 0
