"""Fan-out of announcements from the processes that store to every api process.

Announcing never blocks storing and never raises: ``announce`` queues the bodies in the
process (a bounded queue; the oldest are dropped past it) and a background task sends them.
Delivery is at most once: what is lost (a fan-out server down, a full socket) is repaired by
the feeds' store reads (``Hub.resync`` on reconnection, ``Hub.keep_alive``) and by a client
resuming from its last id.

Which engine, by configuration:

- ``CHATD_REDIS_URL`` set: Redis pub/sub (``redis_fanout``), one channel per deployment.
- otherwise the embedded default: Unix datagram sockets in a directory beside the embedded
  file, one per listening process (``unix_fanout``), so an api process and a worker process
  on one machine see each other without any server; an in-memory store is one process, so
  there the fan-out is a plain call (``LocalFanout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from chatd.live.cancelling import cancel_all, cancel_requested
from chatd.live.events import LiveEvent, split_announcements

logger = logging.getLogger(__name__)

Deliver = Callable[[bytes], None]
Resync = Callable[[], None]

# An announcement above this is split: it fits a datagram, and keeps Redis messages small.
MAX_ANNOUNCEMENT_BYTES = 60_000


class Fanout(Protocol):
    """Announcements from every process to every listening process."""

    name: str

    async def open(self) -> None: ...

    async def close(self) -> None:
        """Send what is queued (for a short bound), then stop."""

    def announce(self, events: Sequence[LiveEvent]) -> None:
        """Queue ``events`` for every listener; returns at once and never raises."""

    async def listen(self, deliver: Deliver, resync: Resync) -> None:
        """Call ``deliver`` for every announcement until cancelled.

        ``resync`` is called whenever announcements may have been missed (after connecting
        or reconnecting), so the caller can read what it missed from the store.
        """


class QueuedFanout:
    """Announcements queued in the process and sent by one background task.

    Subclasses implement ``_send``; a failed or slow send drops that announcement (logged and
    counted), since storing must not wait for the fan-out.
    """

    name = "fanout"

    def __init__(self, max_queued: int = 1000, send_timeout: float = 2.0):
        self.max_queued = max_queued
        self.send_timeout = send_timeout
        self.sent = 0
        self.dropped = 0
        self._queued: deque[bytes] = deque()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._task = asyncio.create_task(self._send_loop(), name="live-fanout-sender")

    async def close(self) -> None:
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self._idle.wait()
        await cancel_all([self._task])
        self._task = None

    def announce(self, events: Sequence[LiveEvent]) -> None:
        if not events:
            return
        for body in split_announcements(events, MAX_ANNOUNCEMENT_BYTES):
            if len(self._queued) >= self.max_queued:
                self._queued.popleft()
                self.dropped += 1
            self._queued.append(body)
        self._idle.clear()
        self._ready.set()

    async def _send_loop(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queued:
                body = self._queued.popleft()
                try:
                    async with asyncio.timeout(self.send_timeout):
                        await self._send(body)
                    self.sent += 1
                except Exception as exc:
                    if cancel_requested():  # a cancel that came out as the send's timeout
                        raise asyncio.CancelledError from None
                    self.dropped += 1
                    logger.warning("live announcement dropped: %s", exc or type(exc).__name__)
            self._idle.set()

    async def _send(self, body: bytes) -> None:
        raise NotImplementedError


class LocalFanout(QueuedFanout):
    """Within one process: the announcements go straight to its own listeners."""

    def __init__(self) -> None:
        super().__init__()
        self._listeners: list[Deliver] = []

    async def _send(self, body: bytes) -> None:
        for deliver in self._listeners:
            deliver(body)

    async def listen(self, deliver: Deliver, resync: Resync) -> None:
        self._listeners.append(deliver)
        try:
            resync()
            await asyncio.Event().wait()
        finally:
            self._listeners.remove(deliver)
