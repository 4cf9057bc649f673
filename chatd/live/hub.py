"""An api process's live subscribers, by feed; announcements from the fan-out come in here."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from chatd.live.cancelling import cancel_all
from chatd.live.edit_replay import replay_edits
from chatd.live.events import APPLICATION_FEED, LiveEvent, decode_announcement, stored_chat, stored_message
from chatd.live.feed import Feed, ReadAfter
from chatd.live.subscriber import Subscriber
from chatd.ports import Store

logger = logging.getLogger(__name__)

FeedKey = tuple[int, int]


@dataclass(frozen=True)
class LiveOptions:
    """How a hub treats its subscribers (from ``Settings``)."""

    buffer_events: int = 1000
    keepalive_seconds: float = 15.0
    hole_wait_seconds: float = 10.0
    settled_age_seconds: float = 300.0
    # A resuming subscriber is sent the edits of this window (seconds, and at most this many).
    edit_replay_seconds: float = 3600.0
    edit_replay_events: int = 500


class Hub:
    """Subscribers of this process, grouped into one ``Feed`` per chat (or application).

    A feed exists while it has subscribers. Every keep-alive interval each subscriber is
    pinged and each feed reads the store once, so an announcement lost on the way (a fan-out
    restart, a full socket buffer) is delivered within an interval even if nothing follows it.
    """

    def __init__(self, store: Store, options: LiveOptions | None = None, wall: Callable[[], float] = time.time):
        self.store = store
        self.options = options or LiveOptions()
        self.wall = wall  # seconds since the epoch: where the edit replay's window starts
        self._replays: dict[Subscriber, asyncio.Task[None]] = {}
        self.feeds: dict[FeedKey, Feed] = {}
        self._tasks: dict[FeedKey, asyncio.Task[None]] = {}
        self._keys: dict[int, FeedKey] = {}  # id(feed) -> its key
        self.announcements = 0
        self.unreadable = 0

    @property
    def subscriber_count(self) -> int:
        return sum(len(feed.subscribers) for feed in self.feeds.values())

    def subscribe(
        self, application_id: int, chat_number: int, after: int, *, resumed: bool = False
    ) -> tuple[Feed, Subscriber]:
        """A subscriber to a chat's messages (or, with ``APPLICATION_FEED``, to the application's chats).

        ``resumed``: the client came back after ``after`` (``Last-Event-ID``, ``?after=``), so it
        is also sent the edits of messages up to ``after`` made within the replay window.
        """
        key = (application_id, chat_number)
        feed = self.feeds.get(key)
        if feed is None:
            feed = Feed(
                self._reader(application_id, chat_number),
                hole_wait=self.options.hole_wait_seconds,
                settled_age=self.options.settled_age_seconds,
            )
            self.feeds[key] = feed
            self._keys[id(feed)] = key
            self._tasks[key] = asyncio.create_task(feed.run(), name=f"live-feed-{application_id}-{chat_number}")
        subscriber = Subscriber(after, self.options.buffer_events)
        feed.add(subscriber)
        if resumed and chat_number != APPLICATION_FEED and after > 0 and self.options.edit_replay_events > 0:
            self._start_edit_replay(application_id, chat_number, subscriber)
        return feed, subscriber

    def _start_edit_replay(self, application_id: int, chat_number: int, subscriber: Subscriber) -> None:
        since = datetime.fromtimestamp(self.wall() - self.options.edit_replay_seconds, UTC)
        # At most half a buffer: edits may overfill a buffer by half before a client counts as slow.
        limit = min(self.options.edit_replay_events, max(1, subscriber.capacity // 2))
        replay = replay_edits(self.store, application_id, chat_number, subscriber, subscriber.last, since, limit)
        task = asyncio.create_task(replay, name=f"live-edit-replay-{application_id}-{chat_number}")
        self._replays[subscriber] = task
        task.add_done_callback(lambda _: self._replays.pop(subscriber, None))

    def unsubscribe(self, feed: Feed, subscriber: Subscriber) -> None:
        feed.remove(subscriber)
        replay = self._replays.pop(subscriber, None)
        if replay is not None:
            replay.cancel()
        key = self._keys.get(id(feed))
        if feed.subscribers or key is None:
            return
        del self.feeds[key], self._keys[id(feed)]
        self._tasks.pop(key).cancel()

    def deliver(self, body: bytes) -> None:
        """Hand one announcement's events to the feeds that have subscribers here."""
        self.announcements += 1
        try:
            events = decode_announcement(body)
        except ValueError:
            self.unreadable += 1
            logger.warning("unreadable live announcement dropped (%d bytes)", len(body))
            return
        by_feed: dict[FeedKey, list[LiveEvent]] = defaultdict(list)
        for event in events:
            if event.feed in self.feeds:
                by_feed[event.feed].append(event)
        for key, offered in by_feed.items():
            self.feeds[key].offer(offered)

    def resync(self) -> None:
        """Announcements may have been missed (the fan-out reconnected): every feed reads the store."""
        for feed in self.feeds.values():
            feed.poll()

    async def keep_alive(self) -> None:
        """Ping every subscriber and poll every feed, each keep-alive interval, until cancelled."""
        while True:
            await asyncio.sleep(self.options.keepalive_seconds)
            for feed in list(self.feeds.values()):
                feed.poll()
                for subscriber in feed.subscribers:
                    subscriber.ping()

    def close_all(self, reason: str) -> None:
        """End every connection (shutdown); clients resume from their last id elsewhere."""
        for feed in self.feeds.values():
            for subscriber in feed.subscribers:
                subscriber.close(reason)

    async def stop(self) -> None:
        await cancel_all([*self._tasks.values(), *self._replays.values()])
        self._replays.clear()
        self._tasks.clear()
        self.feeds.clear()
        self._keys.clear()

    def _reader(self, application_id: int, chat_number: int) -> ReadAfter:
        store = self.store
        if chat_number == APPLICATION_FEED:

            async def read_chats(after: int, limit: int) -> list[LiveEvent]:
                chats = await store.list_chats_after(application_id, after, limit)
                return [stored_chat(application_id, chat) for chat in chats]

            return read_chats

        async def read_messages(after: int, limit: int) -> list[LiveEvent]:
            messages = await store.list_messages_after(application_id, chat_number, after, limit)
            return [stored_message(application_id, chat_number, message) for message in messages]

        return read_messages
