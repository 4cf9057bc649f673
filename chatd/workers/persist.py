"""Consumers that store the chats and messages the API accepted."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from chatd import jobs
from chatd.domain import ChatJob, MessageJob
from chatd.ports import Delivery, Queue, Store
from chatd.workers.consumer import BatchConsumer, Outcome

logger = logging.getLogger(__name__)


class ChatConsumer(BatchConsumer[ChatJob]):
    """Stores accepted chats; a job seen twice stores nothing the second time."""

    topic = jobs.CHATS

    def __init__(self, queue: Queue, store: Store, **options: float):
        super().__init__(queue, **options)  # type: ignore[arg-type]
        self.store = store

    def decode(self, body: bytes) -> ChatJob:
        return jobs.decode_chat(body)

    async def handle(self, batch: Sequence[tuple[Delivery, ChatJob]]) -> Outcome:
        await self.store.save_chats([job for _, job in batch])
        return Outcome()


class MessageConsumer(BatchConsumer[MessageJob]):
    """Stores accepted messages, then hands every one of them to the indexer.

    The hand-over happens after the commit and before the ack, also for messages a
    previous delivery already stored: a worker that died in between is covered by
    the re-delivery, and indexing the same revision twice changes nothing.
    """

    topic = jobs.MESSAGES

    def __init__(self, queue: Queue, store: Store, max_index_backlog: int = 100_000, **options: float):
        super().__init__(queue, **options)  # type: ignore[arg-type]
        self.store = store
        self.max_index_backlog = max_index_backlog
        self._backlog_checked_at = float("-inf")
        self._backlog_ok = True

    async def ready_for_more(self) -> bool:
        # While the search index is down the index queue grows; past the bound, messages wait
        # in their own queue instead (stored later, with nothing lost either way). The depth is
        # asked at most once a second, not once per batch.
        now = time.monotonic()
        if now - self._backlog_checked_at < 1.0:
            return self._backlog_ok
        self._backlog_checked_at = now
        backlog = await self.queue.depth(jobs.INDEX)
        self._backlog_ok = backlog <= self.max_index_backlog
        if not self._backlog_ok:
            logger.warning("index backlog %d over %d: pausing message storage", backlog, self.max_index_backlog)
        return self._backlog_ok

    def decode(self, body: bytes) -> MessageJob:
        return jobs.decode_message(body)

    async def handle(self, batch: Sequence[tuple[Delivery, MessageJob]]) -> Outcome:
        documents = await self.store.save_messages([job for _, job in batch])
        if documents:
            await self.queue.publish(jobs.INDEX, [jobs.encode_document(doc) for doc in documents])
        stored = {(d.application_id, d.chat_number, d.message_number) for d in documents}
        orphans = [
            delivery
            for delivery, job in batch
            if (job.application_id, job.chat_number, job.message_number) not in stored
        ]
        return Outcome(dead=orphans)
