"""Accepting creations: numbers taken in the store, jobs queued durably, in groups.

A POST that creates a chat or a message is answered once its number is taken and its job
is durably queued. Requests that arrive together share the work (``GroupCommit``): one store
transaction numbers the whole group and records its idempotency keys
(``Store.take_numbers``), then one confirmed publish per topic queues the jobs. A request is
answered with a number only after its job was confirmed by the queue; a group whose publish
failed fails every request in it with 503 (their numbers are burnt, unless a retry with the
same Idempotency-Key publishes the job again under the recorded number).

The store is the only place numbers come from: a Redis that is emptied, restarted from an
older snapshot or replaced by a lagging replica cannot make a number be handed out twice,
because no number was ever taken there.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from chatd import metrics
from chatd.domain import NumberScope
from chatd.errors import BackendUnavailable, ChatdError, Unavailable, Unprocessable
from chatd.group_commit import GroupCommit, Shed, Waiting
from chatd.numbering import NumberRequest, Taken
from chatd.ports import Queue, Store

logger = logging.getLogger(__name__)

JobMaker = Callable[[int], bytes]
EpochClock = Callable[[], float]


@dataclass(frozen=True)
class Creation:
    """One creation waiting in a group: what it asks for, where its job goes, how to make the job."""

    request: NumberRequest
    topic: str
    make_job: JobMaker


class CeilingReached(Exception):
    """The scope has handed out every number its ceiling allows: nothing was taken or queued."""

    def __init__(self, ceiling: int):
        super().__init__(f"the ceiling of {ceiling} numbers is reached")
        self.ceiling = ceiling


class Acceptor:
    """Hands out numbers and queues creation jobs, grouping the requests that arrive together."""

    def __init__(
        self,
        store: Store,
        queue: Queue,
        *,
        idempotency_ttl: float = 86400.0,
        max_group: int = 512,
        max_in_flight: int = 2,
        max_pending: int = 1024,
        numbering_timeout: float = 5.0,
        clock: EpochClock = time.time,
    ):
        self.store = store
        self.queue = queue
        self.idempotency_ttl = idempotency_ttl
        self.numbering_timeout = numbering_timeout
        self.clock = clock
        self.groups: GroupCommit[Creation, int] = GroupCommit(
            self._commit, max_group=max_group, max_in_flight=max_in_flight, max_pending=max_pending
        )

    async def accept(
        self,
        scope: NumberScope,
        topic: str,
        make_job: JobMaker,
        idempotency_key: str | None = None,
        fingerprint: str = "",
        ceiling: int = 0,
    ) -> int:
        """Take the next number of ``scope``, queue ``make_job(number)`` durably, return the number.

        With a ``ceiling`` (0: none), a request that would take a number above it raises
        ``CeilingReached``; the check is in the numbering transaction, so no race passes it.

        With an idempotency key, a retry gets the number the key recorded and publishes its
        job again (workers store a number once), so whatever point the first attempt died at,
        the client's number ends up stored. Raises 503 at once when too many creations wait.
        """
        creation = Creation(NumberRequest(scope, idempotency_key, fingerprint, ceiling), topic, make_job)
        try:
            return await self.groups.submit(creation)
        except Shed:
            metrics.CREATIONS_SHED.inc()
            raise Unavailable("too many creations are waiting; retry shortly", code="overloaded") from None

    async def drain(self) -> None:
        """Wait for the groups pending and in flight (at shutdown, after the last request joined)."""
        await self.groups.drain()

    async def _commit(self, group: list[Waiting[Creation, int]]) -> None:
        metrics.ACCEPT_GROUP_SIZE.observe(len(group))
        try:
            taken = await self._take_numbers([waiting.item.request for waiting in group])
        except Exception as exc:
            _fail(group, exc)
            return
        by_topic: dict[str, list[tuple[Waiting[Creation, int], Taken]]] = {}
        for waiting, answer in zip(group, taken):
            if answer.limit_reached:
                waiting.fail(CeilingReached(waiting.item.request.ceiling))
            elif answer.key_reused:
                waiting.fail(
                    Unprocessable(
                        "this Idempotency-Key was used with another request (body or chat); use a new key",
                        code="idempotency_key_reused",
                    )
                )
            else:
                by_topic.setdefault(waiting.item.topic, []).append((waiting, answer))
        await asyncio.gather(*(self._publish(topic, items) for topic, items in by_topic.items()))

    async def _take_numbers(self, requests: list[NumberRequest]) -> list[Taken]:
        try:
            async with asyncio.timeout(self.numbering_timeout):
                return await self.store.take_numbers(requests, self.clock(), self.idempotency_ttl)
        except TimeoutError as exc:
            raise BackendUnavailable(f"the store did not number a group within {self.numbering_timeout:g} s") from exc

    async def _publish(self, topic: str, items: list[tuple[Waiting[Creation, int], Taken]]) -> None:
        # One job per number: two requests of the group with one key (a client's retry racing
        # its first attempt) answer the same number from one job.
        jobs: dict[tuple[str, int], bytes] = {}
        for waiting, answer in items:
            key = (waiting.item.request.scope.key, answer.number)
            if key not in jobs:
                jobs[key] = waiting.item.make_job(answer.number)
        try:
            await self.queue.publish(topic, list(jobs.values()))
        except Exception as exc:
            metrics.NUMBERS_BURNT.inc(sum(1 for _, answer in items if not answer.replayed))
            _fail([waiting for waiting, _ in items], exc)
            return
        for waiting, answer in items:
            waiting.resolve(answer.number)


def _fail(group: list[Waiting[Creation, int]], exc: BaseException) -> None:
    for waiting in group:
        waiting.fail(_for_one(exc))


def _for_one(exc: BaseException) -> BaseException:
    """The error each request of a failed group raises: an instance of its own (tracebacks
    of one instance raised in many tasks would pile up), an outage staying an outage (503)."""
    if isinstance(exc, BackendUnavailable | ChatdError):
        return copy.copy(exc)
    if isinstance(exc, asyncio.CancelledError):
        return BackendUnavailable("the request's group was cancelled (shutting down)")
    return RuntimeError(f"the request's group failed: {exc!r}")
