"""One connection's view of a feed: where it is, and a bounded buffer of events to send."""

from __future__ import annotations

import asyncio
from collections import deque

from chatd.live.events import LiveEvent

SLOW_CONSUMER = "slow_consumer"
SHUTTING_DOWN = "shutting_down"
# The stream lasted CHATD_LIVE_STREAM_SECONDS: the client resumes from its last id.
STREAM_ENDED = "stream_ended"


class Subscriber:
    """A subscriber's position in its feed and the events waiting for its connection to send.

    ``last`` is the highest number this subscriber has been given (or skipped as a settled
    hole): it is the event id a client resumes from. The buffer holds at most ``capacity``
    events; the feed never queues more, so a connection that stops reading costs bounded
    memory. The feed fills the buffer only as the connection drains it; a live subscriber whose
    buffer is full while it is more than ``capacity`` numbers behind the newest message is
    closed (``SLOW_CONSUMER``), and the client resumes from its last id.
    """

    def __init__(self, after: int, capacity: int):
        self.last = after
        self.capacity = capacity
        self.buffer: deque[LiveEvent] = deque()
        self.catching_up = True
        self.ping_due = False
        self.closed: str | None = None
        self.wake = asyncio.Event()
        # Set by the feed: called when the buffer has room again after being filled.
        self.wants_room = False

    @property
    def room(self) -> int:
        return self.capacity - len(self.buffer)

    def give(self, event: LiveEvent) -> None:
        """Queue an event in order (the feed has checked there is room)."""
        self.buffer.append(event)
        self.wake.set()

    def give_update(self, event: LiveEvent) -> None:
        """Queue a ``message.updated``; an edit may exceed the buffer by half before the connection is closed."""
        if len(self.buffer) >= self.capacity + self.capacity // 2:
            self.close(SLOW_CONSUMER)
            return
        self.buffer.append(event)
        self.wake.set()

    def take(self, limit: int) -> list[LiveEvent]:
        """Up to ``limit`` buffered events, oldest first."""
        count = min(limit, len(self.buffer))
        return [self.buffer.popleft() for _ in range(count)]

    def ping(self) -> None:
        self.ping_due = True
        self.wake.set()

    def close(self, reason: str) -> None:
        """Ask the connection to end with ``reason``; the buffer is dropped."""
        if self.closed is None:
            self.closed = reason
            self.buffer.clear()
        self.wake.set()
