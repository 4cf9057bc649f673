"""The feed's ordering rules, driven step by step with a fake store and clock (no servers)."""

from __future__ import annotations

import orjson

from chatd.domain import Message
from chatd.live.events import (
    LiveEvent,
    decode_announcement,
    encode_announcement,
    message_updated,
    split_announcements,
    stored_message,
)
from chatd.live.feed import Feed
from chatd.live.subscriber import SLOW_CONSUMER, Subscriber
from tests.factories import WHEN, document

NOW = WHEN.timestamp()


class FakeStore:
    """Stored messages of one chat, and the reads the feed made."""

    def __init__(self) -> None:
        self.stored: dict[int, str] = {}
        self.reads: list[int] = []

    def store(self, *numbers: int) -> list[LiveEvent]:
        for number in numbers:
            self.stored[number] = f"m{number}"
        return [self.event(number) for number in numbers]

    @staticmethod
    def event(number: int) -> LiveEvent:
        return stored_message(1, 1, Message(number, f"m{number}", WHEN, WHEN))

    async def read_after(self, after: int, limit: int) -> list[LiveEvent]:
        self.reads.append(after)
        return [self.event(n) for n in sorted(self.stored) if n > after][:limit]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_feed(store: FakeStore, clock: Clock, **options: float) -> Feed:
    return Feed(store.read_after, monotonic=clock, wall=lambda: NOW + 1, **options)  # type: ignore[arg-type]


async def timer_fires(feed: Feed, clock: Clock, after: float) -> None:
    """``after`` seconds pass and the feed's timer fires (what ``Feed.run`` does when it is due)."""
    clock.now += after
    feed.tick()
    await feed.pump()


def received(subscriber: Subscriber) -> list[int]:
    return [event.number for event in subscriber.take(10_000)]


async def test_replay_then_live_without_gap_or_duplicate() -> None:
    store, clock = FakeStore(), Clock()
    feed = make_feed(store, clock, page_size=2)
    store.store(1, 2, 3)
    subscriber = Subscriber(after=0, capacity=100)
    feed.add(subscriber)
    # Announced while the replay has not read them yet, and again after: each number once.
    feed.offer(store.store(4, 5))
    await feed.pump()
    feed.offer(store.store(5, 6))
    await feed.pump()
    assert received(subscriber) == [1, 2, 3, 4, 5, 6]
    assert not subscriber.catching_up


async def test_a_hole_being_filled_holds_later_numbers_back() -> None:
    store, clock = FakeStore(), Clock()
    feed = make_feed(store, clock, hole_wait=10)
    subscriber = Subscriber(after=0, capacity=100)
    feed.add(subscriber)
    await feed.pump()
    feed.offer(store.store(1, 3))  # 2 is still being stored by another worker
    await feed.pump()
    assert received(subscriber) == [1]
    clock.now += 1
    feed.offer(store.store(2))
    await feed.pump()
    assert received(subscriber) == [2, 3]


async def test_a_hole_never_filled_is_skipped_after_the_wait() -> None:
    store, clock = FakeStore(), Clock()
    feed = make_feed(store, clock, hole_wait=10, recheck=0.25)
    subscriber = Subscriber(after=0, capacity=100)
    feed.add(subscriber)
    feed.offer(store.store(1, 3, 4))
    await feed.pump()
    assert received(subscriber) == [1] and subscriber.last == 1
    await timer_fires(feed, clock, after=9)
    assert received(subscriber) == []
    await timer_fires(feed, clock, after=1.5)
    assert received(subscriber) == [3, 4]


async def test_a_message_stored_after_its_hole_was_skipped_is_sent_late() -> None:
    # A worker stopped longer than the hole wait: its message comes after the ones above it.
    store, clock = FakeStore(), Clock()
    feed = make_feed(store, clock, hole_wait=10, recheck=0.25)
    subscriber = Subscriber(after=0, capacity=100)
    feed.add(subscriber)
    feed.offer(store.store(1, 3, 4))
    await feed.pump()
    await timer_fires(feed, clock, after=10.5)
    given = subscriber.take(100)
    # While 2 may still come, the ids stay at 1: a client resuming from them is replayed 2.
    assert [(e.number, e.late, e.resume_id) for e in given] == [(1, False, None), (3, False, 1), (4, False, 1)]
    feed.offer(store.store(2))
    (late,) = subscriber.take(100)
    assert (late.number, late.late, late.resume_id) == (2, True, 4)
    assert orjson.loads(late.data()) == {"number": 2, "content": "m2", "created_at": late.created_at, "late": True}
    feed.offer(store.store(5))
    await feed.pump()
    assert [(e.number, e.late, e.resume_id) for e in subscriber.take(100)] == [(5, False, None)]
    # A newcomer from before the hole gets it in order, not late.
    newcomer = Subscriber(after=0, capacity=100)
    feed.add(newcomer)
    await feed.pump()
    assert [(e.number, e.late) for e in newcomer.take(100)] == [(n, False) for n in range(1, 6)]


async def test_a_late_message_whose_announcement_was_lost_is_read_at_the_next_poll() -> None:
    store, clock = FakeStore(), Clock()
    feed = make_feed(store, clock, hole_wait=10, recheck=0.25)
    subscriber = Subscriber(after=0, capacity=100)
    feed.add(subscriber)
    feed.offer(store.store(1, 3))
    await feed.pump()
    await timer_fires(feed, clock, after=10.5)
    assert received(subscriber) == [1, 3]
    store.store(2)  # announcement lost
    feed.poll()
    await feed.pump()
    (late,) = subscriber.take(100)
    assert late.number == 2 and late.late and subscriber.resume_id == 3 and not feed.skipped


async def test_a_hole_is_awaited_late_only_until_it_is_settled() -> None:
    # A number a failed request burnt is never stored: once the message above it is settled_age
    # old, it is given up, and the ids move on to the last number given.
    store, clock = FakeStore(), Clock()
    wall = [NOW + 1]
    feed = Feed(store.read_after, hole_wait=10, settled_age=300, monotonic=clock, wall=lambda: wall[0])  # type: ignore[arg-type]
    subscriber = Subscriber(after=0, capacity=100)
    feed.add(subscriber)
    feed.offer(store.store(1, 3))
    await feed.pump()
    await timer_fires(feed, clock, after=10.5)
    assert received(subscriber) == [1, 3] and subscriber.resume_id == 1
    wall[0] = NOW + 301
    feed.poll()
    await feed.pump()
    assert subscriber.resume_id == 3 and not feed.skipped and not subscriber.pending
    feed.offer(store.store(2))  # stored after all, past the window: not sent
    await feed.pump()
    assert received(subscriber) == []


async def test_holes_in_a_row_share_one_wait() -> None:
    # Each wait counts from when the feed knew a later number stored, not from when a
    # subscriber reached the hole: ten burnt numbers in a row cost one wait, not ten.
    store, clock = FakeStore(), Clock()
    feed = make_feed(store, clock, hole_wait=10, recheck=0.25)
    subscriber = Subscriber(after=0, capacity=100)
    feed.add(subscriber)
    feed.offer(store.store(1, 3, 4, 6, 8))
    await feed.pump()
    assert received(subscriber) == [1]
    await timer_fires(feed, clock, after=10.5)
    assert received(subscriber) == [3, 4, 6, 8]
    # A hole below a number learned just now waits its full time.
    feed.offer(store.store(10))
    await feed.pump()
    await timer_fires(feed, clock, after=9)
    assert received(subscriber) == []
    await timer_fires(feed, clock, after=1.5)
    assert received(subscriber) == [10]


async def test_a_lost_announcement_is_read_from_the_store() -> None:
    store, clock = FakeStore(), Clock()
    feed = make_feed(store, clock)
    subscriber = Subscriber(after=0, capacity=100)
    feed.add(subscriber)
    await feed.pump()
    store.store(1, 2)  # announcement lost
    feed.offer(store.store(3))  # the next one shows a gap: the feed reads 1 and 2
    await feed.pump()
    assert received(subscriber) == [1, 2, 3]
    store.store(4)  # lost, and nothing follows: the keep-alive poll finds it
    feed.poll()
    await feed.pump()
    assert received(subscriber) == [4]


async def test_a_live_subscriber_that_stops_reading_is_closed() -> None:
    store, clock = FakeStore(), Clock()
    feed = make_feed(store, clock)
    subscriber = Subscriber(after=0, capacity=3)
    feed.add(subscriber)
    await feed.pump()
    feed.offer(store.store(1, 2, 3))
    await feed.pump()
    assert subscriber.closed is None
    feed.offer(store.store(4, 5, 6))  # a burst: it waits for room
    await feed.pump()
    assert subscriber.closed is None and received(subscriber) == [1, 2, 3]
    feed.has_room(subscriber)
    await feed.pump()
    feed.offer(store.store(7, 8, 9, 10))  # now more than a buffer's worth behind, with a full buffer
    await feed.pump()
    assert subscriber.closed == SLOW_CONSUMER and not subscriber.buffer


async def test_catching_up_is_paced_by_the_reader_not_closed() -> None:
    store, clock = FakeStore(), Clock()
    feed = make_feed(store, clock, page_size=2)
    store.store(*range(1, 11))
    subscriber = Subscriber(after=0, capacity=3)
    feed.add(subscriber)
    got: list[int] = []
    while len(got) < 10:
        await feed.pump()
        got += received(subscriber)
        feed.has_room(subscriber)
    assert got == list(range(1, 11)) and subscriber.closed is None


async def test_edits_reach_those_past_the_message_and_newcomers_get_the_new_text() -> None:
    store, clock = FakeStore(), Clock()
    feed = make_feed(store, clock)
    ahead = Subscriber(after=0, capacity=100)
    feed.add(ahead)
    await feed.pump()
    feed.offer(store.store(1, 2))
    await feed.pump()
    assert received(ahead) == [1, 2]
    behind = Subscriber(after=0, capacity=1)  # catching up: holds message 1, not yet 2
    feed.add(behind)
    await feed.pump()
    edit = message_updated(document(1, 1, 2, "edited", revision=2), WHEN)
    feed.offer([edit])
    updates = ahead.take(10)
    assert [(e.kind, e.number, e.content) for e in updates] == [("message.updated", 2, "edited")]
    assert received(behind) == [1]
    await feed.pump()
    (second,) = behind.take(10)
    assert (second.kind, second.number, second.content) == ("message.created", 2, "edited")


def test_announcements_split_by_size_and_read_back() -> None:
    events = [FakeStore.event(n) for n in range(1, 40)]
    bodies = split_announcements(events, 300)
    assert len(bodies) > 1 and all(len(body) <= 300 for body in bodies)
    decoded = [event for body in bodies for event in decode_announcement(body)]
    assert [(e.kind, e.number, e.content, e.created_at) for e in decoded] == [
        (e.kind, e.number, e.content, e.created_at) for e in events
    ]
    assert decode_announcement(encode_announcement(events[:2]))[1].at == events[1].at


async def test_joining_a_busy_chat_looks_only_at_the_newcomer() -> None:
    store, clock = FakeStore(), Clock()
    feed = make_feed(store, clock)
    advanced: list[Subscriber] = []
    advance = feed._advance
    feed._advance = lambda subscriber: (advanced.append(subscriber), advance(subscriber))[1]  # type: ignore[method-assign]
    for _ in range(300):
        feed.add(Subscriber(after=0, capacity=10))
        await feed.pump()
    assert len(advanced) <= 2 * 300  # not 300 * 301 / 2
    feed.offer(store.store(1))  # news is for everyone
    await feed.pump()
    assert all(received(subscriber) == [1] for subscriber in feed.subscribers)
