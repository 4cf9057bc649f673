"""Accepting creations: take numbers, record idempotency keys and queue jobs, in groups.

A POST that creates a chat or a message is answered once its number is taken and its job
is durably queued. Paid per request, that is a counter round trip and a confirmed publish
each; here requests that arrive together share them, as a database's group commit shares
one log flush among concurrent transactions:

- a request joins the pending group and waits on a future;
- a flush takes the whole group: one ``Cache.add_many`` claiming its idempotency keys, one
  ``Counters.take`` for every counter involved (each counter gives one contiguous range),
  the store reservations the new numbers need (shared, and usually none), one
  ``Cache.set_many`` for the idempotency records, one ``Queue.publish`` per topic; then every
  request of the group gets its number, or the group's error;
- at most ``max_in_flight`` flushes run at once. Under light load a request is flushed on
  the next loop iteration, alone; under heavy load requests pile up while flushes are in
  flight, so groups grow with the load and the round trips per request shrink.

Nothing here weakens a promise: a request is answered with a number only after its job was
confirmed by the queue, and a group whose publish failed fails every request in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from chatd import metrics
from chatd.domain import NumberScope
from chatd.errors import BackendUnavailable, Conflict, Unprocessable
from chatd.ports import Cache, CounterRange, Counters, Queue, Store

logger = logging.getLogger(__name__)

JobMaker = Callable[[int], bytes]

_CLAIMED = b"claimed"
_CLAIM_SECONDS = 10.0


@dataclass
class _Request:
    """One creation waiting in a group."""

    scope: NumberScope
    topic: str
    make_job: JobMaker
    # The idempotency cache key to record this request's job under, once it holds the key's claim.
    record_key: str | None = None
    claimed: bool = False
    # What the request asks for (kind, chat, content), recorded with the key: a retry must match.
    fingerprint: str = ""
    # Set for a retry whose job was recorded by an earlier attempt: publish it again as it is.
    number: int = 0
    job: bytes = b""
    done: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def replay(self, recorded: bytes) -> None:
        """Become the retry of the request that recorded ``recorded``: its number, its job.

        A key reused for another request (another body or chat) fails this one with 422, as
        payment APIs do: silently answering with the first request's number would drop the
        new content. Records from before fingerprints were kept are taken as they are.
        """
        data = orjson.loads(recorded)
        if data.get("fingerprint", self.fingerprint) != self.fingerprint:
            self.record_key = None
            if not self.done.done():
                self.done.set_exception(
                    Unprocessable(
                        "this Idempotency-Key was used with another request (body or chat); use a new key",
                        code="idempotency_key_reused",
                    )
                )
            return
        self.number, self.job, self.record_key = int(data["number"]), data["job"].encode(), None


class Acceptor:
    """Hands out numbers and queues creation jobs, grouping the requests that arrive together."""

    def __init__(
        self,
        counters: Counters,
        store: Store,
        cache: Cache,
        queue: Queue,
        *,
        number_block: int = 100,
        idempotency_ttl: float = 86400.0,
        max_group: int = 512,
        max_in_flight: int = 2,
    ):
        self.counters = counters
        self.store = store
        self.cache = cache
        self.queue = queue
        self.number_block = number_block
        self.idempotency_ttl = idempotency_ttl
        self.max_group = max_group
        self.max_in_flight = max_in_flight
        self._pending: list[_Request] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._flush_scheduled = False
        # Highest number this process knows to be reserved in the store, per counter key.
        self._reserved: OrderedDict[str, int] = OrderedDict()
        # One store write at a time per counter; waiters usually find their numbers covered.
        self._reserving: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def accept(
        self,
        scope: NumberScope,
        topic: str,
        make_job: JobMaker,
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> int:
        """Take the next number of ``scope``, queue ``make_job(number)`` durably, return the number.

        With an idempotency key, the job is recorded under the key before it is published,
        and a retry publishes the recorded job again (workers store it once) and returns its
        number: whatever point the first attempt died at, the client's number ends up stored.
        """
        request = _Request(scope, topic, make_job, fingerprint=fingerprint)
        if idempotency_key is not None:
            # Per application, not per chat: the same key sent to another chat is a reuse.
            request.record_key = f"idem:{scope.application_id}:{idempotency_key}"
        self._join(request)
        return await request.done

    async def drain(self) -> None:
        """Wait for the flushes in flight (at shutdown, after the last request joined)."""
        while self._flushes or self._pending or self._background:
            if self._flushes or self._background:
                await asyncio.gather(*self._flushes, *self._background, return_exceptions=True)
            else:
                self._start_flushes()

    # -- grouping --------------------------------------------------------------------------

    def _join(self, request: _Request) -> None:
        self._pending.append(request)
        self._schedule()

    def _schedule(self) -> None:
        # Flush on the next loop iteration, so that every request whose handler runs in this
        # one joins the same group.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._start_flushes)

    def _start_flushes(self) -> None:
        self._flush_scheduled = False
        while self._pending and len(self._flushes) < self.max_in_flight:
            group, self._pending = self._pending[: self.max_group], self._pending[self.max_group :]
            task = asyncio.create_task(self._flush(group))
            self._flushes.add(task)
            task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flushes.discard(task)
        if self._pending:
            self._schedule()

    async def _flush(self, group: list[_Request]) -> None:
        metrics.ACCEPT_GROUP_SIZE.observe(len(group))
        try:
            group = await self._claim_keys(group)
            await self._number(group)
            await self._record(group)
        except BaseException as exc:
            await self._free_claims(group)
            _fail(group, exc)
            if not isinstance(exc, Exception):
                raise
            return
        by_topic: dict[str, list[_Request]] = {}
        for request in group:
            by_topic.setdefault(request.topic, []).append(request)
        await asyncio.gather(*(self._publish(topic, requests) for topic, requests in by_topic.items()))

    async def _publish(self, topic: str, requests: list[_Request]) -> None:
        try:
            await self.queue.publish(topic, [request.job for request in requests])
        except Exception as exc:
            _fail(requests, exc)
        else:
            for request in requests:
                if not request.done.done():
                    request.done.set_result(request.number)

    # -- idempotency -----------------------------------------------------------------------

    async def _claim_keys(self, group: list[_Request]) -> list[_Request]:
        """Claim the idempotency keys of the group at once; return the requests that go on now.

        A key claimed here lets its request take a number. A key whose job is recorded makes
        its request a replay of that job. A key claimed by a request still in progress sends
        its request to wait for that one (outside the group), then to join a later group.
        """
        claimants = {
            request.record_key: request
            for request in reversed(group)  # reversed: the first request of a key is the one kept
            if request.record_key is not None and not request.claimed
        }
        if not claimants:
            return group
        claimed = await self.cache.add_many(dict.fromkeys(claimants, _CLAIMED), _CLAIM_SECONDS)
        for key, request in claimants.items():
            request.claimed = claimed[key]
        losers = [request for request in group if request.record_key is not None and not request.claimed]
        if losers:
            recorded = await self.cache.get_many(list({request.record_key or "" for request in losers}))
            for request in losers:
                value = recorded.get(request.record_key) if request.record_key else None
                if value is not None and value != _CLAIMED:
                    request.replay(value)
                else:
                    self._wait_for_claim(request)
        return [
            request for request in group if not request.done.done() and (request.record_key is None or request.claimed)
        ]

    def _wait_for_claim(self, request: _Request) -> None:
        async def wait() -> None:
            assert request.record_key is not None
            try:
                recorded = await self._claim(request.record_key)
            except Exception as exc:
                _fail([request], exc)
                return
            if recorded is None:
                request.claimed = True
            else:
                request.replay(recorded)
            if not request.done.done():
                self._join(request)

        task = asyncio.create_task(wait())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _claim(self, key: str) -> bytes | None:
        """The job recorded under ``key``; None once this request has claimed the key.

        A claim that its request never completed expires after ``_CLAIM_SECONDS``.
        """
        deadline = time.monotonic() + _CLAIM_SECONDS
        while True:
            if await self.cache.add(key, _CLAIMED, _CLAIM_SECONDS):
                return None
            value = await self.cache.get(key)
            if value not in (None, _CLAIMED):
                return value
            if time.monotonic() > deadline:
                raise Conflict(
                    "a request with this Idempotency-Key is still in progress", code="idempotency_in_progress"
                )
            await asyncio.sleep(0.05)

    async def _record(self, group: list[_Request]) -> None:
        records = {
            request.record_key: orjson.dumps(
                {"number": request.number, "job": request.job.decode(), "fingerprint": request.fingerprint}
            )
            for request in group
            if request.record_key is not None
        }
        if records:
            await self.cache.set_many(records, self.idempotency_ttl)

    async def _free_claims(self, group: list[_Request]) -> None:
        # Nothing was recorded, so nothing was published: free the keys for the retries.
        for request in group:
            if request.record_key is not None and request.claimed:
                request.claimed = False
                with contextlib.suppress(Exception):
                    await self.cache.delete(request.record_key)

    # -- numbers ---------------------------------------------------------------------------

    async def _number(self, group: list[_Request]) -> None:
        """Give every request of the group that has none a number, and make its job."""
        wanted: dict[str, list[_Request]] = {}
        scopes: dict[str, NumberScope] = {}
        for request in group:
            if not request.job:
                wanted.setdefault(request.scope.key, []).append(request)
                scopes[request.scope.key] = request.scope
        numbers = await self._take_numbers({key: len(requests) for key, requests in wanted.items()}, scopes)
        for key, requests in wanted.items():
            for request, number in zip(requests, numbers[key]):
                request.number = number
                request.job = request.make_job(number)

    async def _take_numbers(self, counts: dict[str, int], scopes: dict[str, NumberScope]) -> dict[str, list[int]]:
        """Take ``counts[key]`` numbers of each counter, none ever handed out before, even after counter loss.

        The store keeps a reservation ahead of each counter: a counter that restarts empty
        resumes above it, so numbers still queued and not yet stored are never reissued. A
        number is handed out at once if a reservation covering it was committed before it
        was taken. Otherwise it waits for one (concurrent groups share a single store write),
        and is handed out only if the counter that gave it is still the same generation; a
        number from a counter lost meanwhile is dropped (a gap) and another one taken.
        """
        numbers: dict[str, list[int]] = {key: [] for key in counts}
        wanted = dict(counts)
        while wanted:
            reserved_before = {key: self._reserved.get(key, 0) for key in wanted}
            taken = await self.counters.take(wanted)
            await self._seed([key for key, got in taken.items() if got is None], scopes)
            uncovered: dict[str, CounterRange] = {}
            for key, got in taken.items():
                if got is None:
                    continue
                covered = range(got.first, min(got.last, reserved_before[key]) + 1)
                numbers[key].extend(covered)
                wanted[key] -= len(covered)
                if got.last > reserved_before[key]:
                    uncovered[key] = CounterRange(got.first + len(covered), got.last, got.generation)
            if uncovered:
                await asyncio.gather(*(self._reserve(key, scopes[key], got.last) for key, got in uncovered.items()))
                generations = await self.counters.generations(list(uncovered))
                for key, got in uncovered.items():
                    if generations[key] == got.generation:
                        numbers[key].extend(range(got.first, got.last + 1))
                        wanted[key] -= got.last - got.first + 1
                    else:
                        logger.warning(
                            "counter %s was lost while reserving; dropping numbers %d-%d", key, got.first, got.last
                        )
            wanted = {key: count for key, count in wanted.items() if count > 0}
        for key, taken_numbers in numbers.items():
            if taken_numbers:
                self._reserve_ahead(key, scopes[key], max(taken_numbers))
        return numbers

    def _reserve_ahead(self, key: str, scope: NumberScope, last: int) -> None:
        """Extend a reservation that is running out in the background, so no request waits for it."""
        if self._reserved.get(key, 0) - last >= self.number_block // 2:
            return
        lock = self._reserving.get(key)
        if lock is not None and lock.locked():
            return  # a reservation is being written already
        task = asyncio.create_task(self._reserve(key, scope, last))
        self._background.add(task)
        task.add_done_callback(self._reserved_ahead)

    def _reserved_ahead(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Harmless: a request that needs the numbers reserves them itself.
            logger.warning("reserving numbers ahead failed: %r", task.exception())

    async def _seed(self, keys: list[str], scopes: dict[str, NumberScope]) -> None:
        """Create missing counters above every number stored or reserved in the store."""

        async def seed(key: str) -> None:
            await self.counters.seed(key, await self.store.number_floor(scopes[key]))

        await asyncio.gather(*(seed(key) for key in keys))

    async def _reserve(self, key: str, scope: NumberScope, upto: int) -> None:
        lock = self._reserving.get(key)
        if lock is None:
            lock = self._reserving[key] = asyncio.Lock()
        async with lock:
            if upto > self._reserved.get(key, 0):
                reserved = await self.store.reserve_numbers(scope, upto + self.number_block)
                self._reserved[key] = reserved
                self._reserved.move_to_end(key)
                trim_memo(self._reserved)

    def forget_reservations(self) -> None:
        """Forget what this process knows of the store's reservations (as a new process would)."""
        self._reserved.clear()


def trim_memo(entries: OrderedDict[Any, Any], limit: int = 100_000) -> None:
    """Keep a per-process memo bounded: drop the entries added (or refreshed) first."""
    while len(entries) > limit:
        entries.popitem(last=False)


def _fail(requests: list[_Request], exc: BaseException) -> None:
    for request in requests:
        if not request.done.done():
            request.done.set_exception(_for_one(exc))


def _for_one(exc: BaseException) -> BaseException:
    """The error a request of a failed group raises: an outage becomes a 503 for each of them."""
    if isinstance(exc, BackendUnavailable):
        return BackendUnavailable(str(exc))
    if isinstance(exc, asyncio.CancelledError):
        return BackendUnavailable("the request's group was cancelled (shutting down)")
    return exc
