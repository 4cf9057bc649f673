"""Announcing what was stored: a Store that tells the fan-out after each write commits.

Wrapping the store port means every path that stores a chat or message, or edits one,
announces it, and only once the write has committed: the workers' batches (a batch is one
announcement), a re-delivered batch (announced again; subscribers take each number once),
and the API's edits.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Self, cast

from chatd import tracing
from chatd.domain import ChatJob, MessageJob, SearchDocument
from chatd.live import events
from chatd.live.fanout import Fanout
from chatd.ports import Backends, Store

logger = logging.getLogger(__name__)


class AnnouncingStore:
    """The store, announcing stored chats, stored messages and edits (everything else passes through)."""

    def __init__(self, store: Store, fanout: Fanout):
        self._store = store
        self._fanout = fanout

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    # ``async with`` looks these up on the class, never through __getattr__: passed on by hand.
    async def __aenter__(self) -> Self:
        await self._store.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._store.close()

    async def save_chats(self, jobs: Sequence[ChatJob]) -> None:
        await self._store.save_chats(jobs)
        self._announce([events.chat_created(j.application_id, j.chat_number, j.created_at) for j in jobs])

    async def save_messages(self, jobs: Sequence[MessageJob]) -> list[SearchDocument]:
        documents = await self._store.save_messages(jobs)
        self._announce([events.message_created(document) for document in documents])
        return documents

    async def update_message(
        self, application_id: int, chat_number: int, number: int, content: str, updated_at: datetime
    ) -> SearchDocument | None:
        document = await self._store.update_message(application_id, chat_number, number, content, updated_at)
        if document is not None:
            self._announce([events.message_updated(document, updated_at)])
        return document

    def _announce(self, announced: list[events.LiveEvent]) -> None:
        try:
            # In a worker's store span while tracing is on (chatd.tracing): the fan-out's step.
            with tracing.span("chatd live announce", **{"chatd.live.events": len(announced)}):
                self._fanout.announce(announced)
        except Exception:  # storing goes on whatever happens to the fan-out
            logger.exception("live announcement failed")


def announcing(backends: Backends, fanout: Fanout) -> Backends:
    """``backends`` with a store that announces to ``fanout``."""
    return dataclasses.replace(backends, store=cast(Store, AnnouncingStore(backends.store, fanout)))
