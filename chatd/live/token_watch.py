"""Closing the live streams whose token stopped working: expired after a rotation, or revoked.

A stream is checked when it opens, like any request; a token can stop working later (its grace
period runs out, or it is revoked on another process). Once a second, each token that has
streams open on this process is looked up again (through the shared cache: one lookup per token,
however many streams use it), and the streams of a token that no longer names its application
are closed with ``TOKEN_REVOKED``. A store that cannot answer closes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from chatd.live.subscriber import TOKEN_REVOKED, Subscriber

CHECK_SECONDS = 1.0


class TokenWatch:
    def __init__(self, token_works: Callable[[str], Awaitable[bool]], interval: float = CHECK_SECONDS):
        self.token_works = token_works
        self.interval = interval
        self._streams: dict[str, set[Subscriber]] = {}

    def watch(self, token: str, subscriber: Subscriber) -> None:
        self._streams.setdefault(token, set()).add(subscriber)

    def forget(self, token: str, subscriber: Subscriber) -> None:
        streams = self._streams.get(token)
        if streams is not None:
            streams.discard(subscriber)
            if not streams:
                del self._streams[token]

    async def check_once(self) -> int:
        """Close the streams of every token that stopped working; how many were closed."""
        closed = 0
        for token in list(self._streams):
            if await self.token_works(token):
                continue
            for subscriber in list(self._streams.get(token, ())):
                subscriber.close(TOKEN_REVOKED)
                closed += 1
        return closed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check_once()
