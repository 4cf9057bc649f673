"""One connection's view of a feed: where it is, and a bounded buffer of events to send."""

from __future__ import annotations

import asyncio
from collections import deque

from chatd.live.events import LiveEvent

SLOW_CONSUMER = "slow_consumer"
SHUTTING_DOWN = "shutting_down"
# The stream lasted CHATD_LIVE_STREAM_SECONDS: the client resumes from its last id.
STREAM_ENDED = "stream_ended"
# The token the stream was opened with stopped working (its grace period ended, or it was revoked).
TOKEN_REVOKED = "token_revoked"


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
        # Message number -> the newest revision given, for edited messages only (revision 1 is
        # older than every edit): an edit that arrives after a newer one is not sent. At most
        # ``capacity`` messages, the least recently edited forgotten first.
        self.revisions: dict[int, int] = {}
        # Numbers this subscriber passed as holes that may still be stored (``Feed.skipped``):
        # each comes late if it is; until then the event id stays below the lowest (resume_id).
        self.pending: set[int] = set()

    @property
    def resume_id(self) -> int:
        """Where a client that received everything given so far resumes without losing a record.

        ``last``, unless a number below it may still come late: then just below the lowest such,
        so a resume replays it (and repeats the records above it this client already has).
        """
        return min(self.pending) - 1 if self.pending else self.last

    def give_late(self, event: LiveEvent) -> None:
        """Queue a record stored after this subscriber passed its number (it was in ``pending``).

        Like an edit, it may exceed the buffer by half before the connection is closed.
        """
        self.pending.discard(event.number)
        if len(self.buffer) >= self.capacity + self.capacity // 2:
            self.close(SLOW_CONSUMER)
            return
        self.buffer.append(event.resumed_at(self.resume_id))
        self.wake.set()

    @property
    def room(self) -> int:
        # Never below 0: edits may overfill the buffer (give_update), and the feed gives while room != 0.
        return max(0, self.capacity - len(self.buffer))

    def give(self, event: LiveEvent) -> None:
        """Queue an event in order (the feed has checked there is room)."""
        self.buffer.append(event)
        self._remember(event)
        self.wake.set()

    def give_update(self, event: LiveEvent) -> None:
        """Queue a ``message.updated`` newer than what this subscriber was given of that message.

        An edit no newer (announced twice, or overtaken by a later one on the way from another
        process) is dropped, so the client never ends on an older text. An edit may exceed the
        buffer by half before the connection is closed.
        """
        if (event.revision or 1) <= self.revisions.get(event.number, 1):
            return
        if len(self.buffer) >= self.capacity + self.capacity // 2:
            self.close(SLOW_CONSUMER)
            return
        self.buffer.append(event)
        self._remember(event)
        self.wake.set()

    def _remember(self, event: LiveEvent) -> None:
        revision = event.revision or 1
        if revision <= self.revisions.get(event.number, 1):
            return  # nothing newer than what it was given already
        self.revisions.pop(event.number, None)  # to the end: the most recently edited
        self.revisions[event.number] = revision
        if len(self.revisions) > self.capacity:
            del self.revisions[next(iter(self.revisions))]

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
