"""The search indexer: bulk-writes batches of stored messages into the search index."""

from __future__ import annotations

from collections.abc import Sequence

from chatd import jobs
from chatd.domain import SearchDocument
from chatd.ports import Delivery, Queue, SearchIndex
from chatd.workers.consumer import BatchConsumer, Outcome


class Indexer(BatchConsumer[SearchDocument]):
    """Collects up to ``batch_size`` documents or waits ``batch_wait`` seconds, then bulk-indexes.

    Jobs are acked only after the bulk write; documents the index refused are retried.
    """

    topic = jobs.INDEX

    def __init__(self, queue: Queue, search: SearchIndex, **options: float):
        super().__init__(queue, **options)  # type: ignore[arg-type]
        self.search = search

    def decode(self, body: bytes) -> SearchDocument:
        return jobs.decode_document(body)

    async def handle(self, batch: Sequence[tuple[Delivery, SearchDocument]]) -> Outcome:
        failed = await self.search.index([doc for _, doc in batch])
        failed_ids = {doc.doc_id for doc in failed}
        return Outcome(retry=[delivery for delivery, doc in batch if doc.doc_id in failed_ids])
