"""Consumers that store the chats and messages the API accepted."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from chatd import jobs, metrics, tracing
from chatd.domain import ChatJob, MessageJob, SearchDocument
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
        _observe_lag("chat", [job.created_at for _, job in batch])
        return Outcome()


class MessageConsumer(BatchConsumer[MessageJob]):
    """Stores accepted messages, then hands every one of them to the indexer.

    The hand-over happens after the commit and before the ack, also for messages a
    previous delivery already stored: a worker that died in between is covered by
    the re-delivery, and indexing the same revision twice changes nothing.
    """

    topic = jobs.MESSAGES

    def __init__(
        self,
        queue: Queue,
        store: Store,
        max_index_backlog: int = 100_000,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        **options: float,
    ):
        super().__init__(queue, **options)  # type: ignore[arg-type]
        self.store = store
        self.max_index_backlog = max_index_backlog
        self.monotonic = monotonic  # injected, so a test moves it past the depth's 1 s memo
        self._backlog_checked_at = float("-inf")
        self._backlog_ok = True

    async def ready_for_more(self) -> bool:
        # While the search index is down the index queue grows; past the bound, messages wait
        # in their own queue instead (stored later, with nothing lost either way). The depth is
        # asked at most once a second, not once per batch.
        now = self.monotonic()
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
        with tracing.batch("chatd store messages", [job.trace for _, job in batch]) as traces:
            documents = await self.store.save_messages([job for _, job in batch])
        _observe_lag("message", [job.created_at for _, job in batch])
        if documents:
            # Where each message's trace goes on: nothing to map while tracing is off.
            onward = (
                {
                    (job.application_id, job.chat_number, job.message_number): trace
                    for (_, job), trace in zip(batch, traces)
                }
                if any(traces)
                else {}
            )
            await self.queue.publish(jobs.INDEX, [_to_index(doc, onward) for doc in documents])
        stored = {(d.application_id, d.chat_number, d.message_number) for d in documents}
        orphans = [
            delivery
            for delivery, job in batch
            if (job.application_id, job.chat_number, job.message_number) not in stored
        ]
        return Outcome(dead=orphans)


def _observe_lag(kind: str, accepted: Sequence[datetime]) -> None:
    """From each job's 201 (its created_at, taken when its number was) to now, just stored."""
    histogram, now = metrics.STORED_LAG.labels(kind), time.time()
    for moment in accepted:
        histogram.observe(max(0.0, now - moment.timestamp()))


def _to_index(doc: SearchDocument, traces: Mapping[tuple[int, int, int], str | None]) -> bytes:
    """The index job of a stored message: a first revision counts towards the searchable lag."""
    trace = traces.get((doc.application_id, doc.chat_number, doc.message_number))
    if doc.revision == 1 or trace:
        doc = replace(doc, trace=trace, fresh=doc.revision == 1)
    return jobs.encode_document(doc)
