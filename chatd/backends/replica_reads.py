"""Reads that may lag a little, served by a MariaDB/MySQL replica while it keeps up.

What goes to the replica (``StoreReads``): a chat, a message, and their lists, as the API's GET
routes read them. A client already sees those a little behind its writes (a message is stored by a
worker after its 201), and a replica adds at most ``max_lag`` seconds to that. Everything else
reads the primary: tokens (a new application must work at once, a revoked token must stop), the
counters that say whether a number was handed out, the live feeds, and every write.

The replica is used while its replication runs and lags by at most ``max_lag`` seconds, as its
``SHOW SLAVE STATUS`` says, looked at once a second at most; otherwise, and for any read the
replica fails, the primary answers. So a replica that stops, falls behind or goes away costs
freshness for a second at most, never an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from chatd.domain import Chat, Message, Page
from chatd.errors import BackendUnavailable
from chatd.ports import Store

logger = logging.getLogger(__name__)

# How often the replica's lag is looked at (at most: only when reads come).
CHECK_EVERY_SECONDS = 1.0


class ReplicaReads:
    """``StoreReads`` from ``replica`` while it keeps up with the primary, else from ``primary``."""

    def __init__(
        self,
        primary: Store,
        replica: Any,
        *,
        max_lag: float,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.primary = primary
        # A MysqlStore on the replica: the reads below and ``replication_lag``, nothing else.
        self.replica = replica
        self.max_lag = max_lag
        self.monotonic = monotonic
        self.usable = False
        self._checked = float("-inf")
        self._checking = asyncio.Lock()

    async def _source(self) -> Any:
        if self.monotonic() - self._checked >= CHECK_EVERY_SECONDS and not self._checking.locked():
            async with self._checking:
                self._checked = self.monotonic()
                await self._check()
        return self.replica if self.usable else self.primary

    async def _check(self) -> None:
        try:
            await self.replica.open()  # a no-op once open; a replica down at start is opened here later
            lag = await self.replica.replication_lag()
        except BackendUnavailable:
            lag = None
        usable = lag is not None and lag <= self.max_lag
        if usable != self.usable:
            if usable:
                logger.info("replica reads: the replica keeps up (lag %.0f s): reads go to it", lag)
            else:
                logger.warning(
                    "replica reads: the replica %s: reads go to the primary",
                    "does not replicate or answer" if lag is None else f"lags by {lag:.0f} s",
                )
        self.usable = usable

    async def _read(self, name: str, *args: Any) -> Any:
        source = await self._source()
        if source is self.replica:
            try:
                return await getattr(self.replica, name)(*args)
            except BackendUnavailable:
                self.usable = False  # until the next check finds it back
        return await getattr(self.primary, name)(*args)

    async def get_chat(self, application_id: int, number: int) -> Chat | None:
        return await self._read("get_chat", application_id, number)  # type: ignore[no-any-return]

    async def list_chats(self, application_id: int, page: int, per_page: int) -> Page[Chat]:
        return await self._read("list_chats", application_id, page, per_page)  # type: ignore[no-any-return]

    async def list_chats_after(self, application_id: int, after: int, limit: int) -> list[Chat]:
        return await self._read("list_chats_after", application_id, after, limit)  # type: ignore[no-any-return]

    async def get_message(self, application_id: int, chat_number: int, number: int) -> Message | None:
        return await self._read("get_message", application_id, chat_number, number)  # type: ignore[no-any-return]

    async def list_messages(self, application_id: int, chat_number: int, page: int, per_page: int) -> Page[Message]:
        return await self._read(  # type: ignore[no-any-return]
            "list_messages", application_id, chat_number, page, per_page
        )

    async def list_messages_after(self, application_id: int, chat_number: int, after: int, limit: int) -> list[Message]:
        return await self._read(  # type: ignore[no-any-return]
            "list_messages_after", application_id, chat_number, after, limit
        )
