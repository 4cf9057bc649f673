"""The indexer gives back documents the index refused for a passing reason, attempts unspent."""

from __future__ import annotations

from collections.abc import Sequence

from chatd import jobs
from chatd.domain import SearchDocument
from chatd.ports import Delivery
from chatd.workers.indexer import Indexer
from tests.factories import document


class RefusesOne:
    """A search index that refuses one document for a passing reason (a 429, a write block)."""

    def __init__(self, refused: str):
        self.refused = refused

    async def index(self, documents: Sequence[SearchDocument]) -> list[SearchDocument]:
        return [doc for doc in documents if doc.doc_id == self.refused]


class Settled:
    def __init__(self) -> None:
        self.acked: list[Delivery] = []
        self.released: list[Delivery] = []
        self.retried: list[Delivery] = []

    async def ack(self, topic: str, deliveries: Sequence[Delivery]) -> None:
        self.acked.extend(deliveries)

    async def release(self, topic: str, deliveries: Sequence[Delivery]) -> None:
        self.released.extend(deliveries)

    async def retry(self, topic: str, deliveries: Sequence[Delivery]) -> None:
        self.retried.extend(deliveries)


async def test_a_refused_document_is_released_not_retried() -> None:
    first, second = document(1, 1, 1, "hello"), document(1, 1, 2, "world")
    queue = Settled()
    indexer = Indexer(queue, RefusesOne(second.doc_id), batch_size=10, batch_wait=0, max_attempts=3)  # type: ignore[arg-type]
    deliveries = [Delivery(jobs.encode_document(doc), attempts=3) for doc in (first, second)]
    assert await indexer.process(deliveries)
    assert queue.acked == deliveries[:1]
    assert queue.released == deliveries[1:]  # its attempts stay where they were: no nearer the dead letters
    assert queue.retried == []
