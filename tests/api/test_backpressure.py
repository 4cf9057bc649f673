"""Message storage pauses while the index queue is over its bound, and resumes after."""

from __future__ import annotations

from chatd import jobs
from chatd.workers.persist import MessageConsumer
from tests.conftest import Api
from tests.factories import FakeClock, document, eventually


async def test_message_storage_waits_for_the_indexer(make_api) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(max_index_backlog=5)
    assert api.pipeline.messages.max_index_backlog == 5
    queue = api.service.queue
    # The consumer asks the queue's depth at most once a second: its clock is the test's to move.
    clock = FakeClock()
    messages = MessageConsumer(
        queue, api.service.store, max_index_backlog=5, monotonic=clock, batch_size=10, batch_wait=0, max_attempts=5
    )
    await queue.publish(jobs.INDEX, [jobs.encode_document(document(1, 1, n, "waiting")) for n in range(1, 11)])
    assert await eventually(lambda: _at_least(queue.depth(jobs.INDEX), 10))
    assert not await messages.ready_for_more()
    while await api.pipeline.indexer.run_once(max_wait=0.5):
        pass
    assert not await messages.ready_for_more()  # the answer of a moment ago still stands...
    clock.advance(1.0)
    assert await messages.ready_for_more()  # ...until a second has passed


async def _at_least(depth, at_least: int) -> bool:  # type: ignore[no-untyped-def]
    return bool(await depth >= at_least)
