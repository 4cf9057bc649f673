"""A live connection's write deadline: a write its client has not taken within it ends the connection.

A write to a client that stopped reading blocks once the socket's buffers are full, and would
hold its connection, its subscriber and its buffered events for as long as TCP allows (hours).
One timer per connection instead of a timeout per write: the timer runs every ``seconds`` while
nothing is being written, and when it finds a write in progress it moves itself to that write's
own deadline, so a stalled write is ended exactly ``seconds`` after it began, and a write costs
only two attribute stores (a delivery of one event to 10,000 subscribers is 10,000 writes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class WriteDeadline:
    """Calls ``abort`` when a write that began with ``writing()`` has not ``written()`` within ``seconds``."""

    def __init__(
        self,
        seconds: float,
        abort: Callable[[], None],
        unsent: Callable[[], int],
        loop: asyncio.AbstractEventLoop | None = None,
    ):
        self.seconds = seconds
        self.abort = abort
        self.unsent = unsent
        self.loop = loop or asyncio.get_running_loop()
        self.since: float | None = None
        self.finished = False
        self.expired = False
        self._timer = self.loop.call_later(seconds, self._check)

    def writing(self) -> None:
        """A write begins (it may return at once, or wait for the client to read)."""
        self.since = self.loop.time()

    def written(self) -> None:
        self.since = None

    def finish(self) -> None:
        """The stream ended: what is still ``unsent`` must be taken within the deadline from now.

        A write returns once the bytes are buffered, so the last ones can sit unsent under a
        client that stopped reading, and with them the connection; they get one more deadline.
        """
        self.finished = True
        if self.unsent():
            self.since = self.loop.time()
            self._timer.cancel()
            self._timer = self.loop.call_at(self.since + self.seconds, self._check)
        else:
            self._timer.cancel()

    def _check(self) -> None:
        since = self.since
        if self.finished:
            if self.unsent():
                self.expired = True
                self.abort()
        elif since is None:
            self._timer = self.loop.call_later(self.seconds, self._check)
        elif self.loop.time() - since >= self.seconds:
            self.expired = True
            self.abort()
        else:
            self._timer = self.loop.call_at(since + self.seconds, self._check)
