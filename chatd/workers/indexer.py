"""The search indexer: bulk-writes batches of stored messages into the search index."""

from __future__ import annotations

import time
from collections.abc import Sequence

from chatd import jobs, metrics, tracing
from chatd.domain import SearchDocument
from chatd.ports import Delivery, Queue, SearchIndex
from chatd.workers.consumer import BatchConsumer, Outcome


class Indexer(BatchConsumer[SearchDocument]):
    """Collects up to ``batch_size`` documents or waits ``batch_wait`` seconds, then bulk-indexes.

    Jobs are acked only after the bulk write; documents the index refused for a passing reason
    (overloaded, a write block after the disk filled) are given back without spending an attempt,
    as when the whole index is unavailable.
    """

    topic = jobs.INDEX

    def __init__(self, queue: Queue, search: SearchIndex, **options: float):
        super().__init__(queue, **options)  # type: ignore[arg-type]
        self.search = search

    def decode(self, body: bytes) -> SearchDocument:
        return jobs.decode_document(body)

    async def handle(self, batch: Sequence[tuple[Delivery, SearchDocument]]) -> Outcome:
        with tracing.batch("chatd index messages", [doc.trace for _, doc in batch]):
            failed = await self.search.index([doc for _, doc in batch])
        failed_ids = {doc.doc_id for doc in failed}
        if failed_ids:
            metrics.BACKEND_ERRORS.labels("search", "rejected").inc(len(failed_ids))
        # A new message's time to become searchable, from its 201: the promise the README makes.
        histogram, now = metrics.SEARCHABLE_LAG, time.time()
        for _, doc in batch:
            if doc.fresh and doc.doc_id not in failed_ids:
                histogram.observe(max(0.0, now - doc.created_at.timestamp()))
        return Outcome(later=[delivery for delivery, doc in batch if doc.doc_id in failed_ids])
