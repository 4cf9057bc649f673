"""The per-process memo of each application's limits: one shared read a second, however many tenants.

A process reads the shared version key at most once a second and each application's overrides
only when it has no memo of them; a change anywhere (a new version) empties every memo.
"""

from __future__ import annotations

import asyncio
from typing import Any

from chatd.caching import OptionalCache
from chatd.limits.book import VERSION_KEY, LimitBook
from chatd.limits.limiter import Limiter
from chatd.limits.policies import Limits, Policy, StreamPolicy, defaults
from chatd.settings import Settings
from tests.factories import FakeClock


class CountingCache:
    """A dict as the shared cache, counting its reads."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.reads: list[str] = []
        # Cleared: reads wait until it is set again (a Redis round trip that takes a while, or a cut).
        self.answering = asyncio.Event()
        self.answering.set()

    async def get(self, key: str) -> bytes | None:
        self.reads.append(key)
        await self.answering.wait()
        return self.values.get(key)

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        self.values[key] = value

    async def delete(self, key: str) -> None:
        self.values.pop(key, None)


class Overrides:
    def __init__(self) -> None:
        self.stored: dict[int, dict[str, float]] = {}
        self.reads = 0

    async def get_overrides(self, application_id: int) -> dict[str, float]:
        self.reads += 1
        return dict(self.stored.get(application_id, {}))

    async def set_overrides(self, application_id: int, overrides: Any) -> None:
        self.stored[application_id] = dict(overrides)


def make_book(cache: CountingCache, store: Overrides, clock: FakeClock) -> LimitBook:
    limits = defaults(Settings().rate_limit_values())
    return LimitBook(limits, store, OptionalCache(cache), monotonic=clock)  # type: ignore[arg-type]


def one_policy_book(policy: Policy, clock: FakeClock, cache: CountingCache | None = None) -> LimitBook:
    """A book whose every application has ``policy`` for reads, writes and searches."""
    limits = Limits(policy, policy, policy, StreamPolicy(10))
    return LimitBook(limits, Overrides(), OptionalCache(cache or CountingCache()), monotonic=clock)  # type: ignore[arg-type]


async def test_many_tenants_cost_one_shared_read_a_second() -> None:
    cache, store, clock = CountingCache(), Overrides(), FakeClock(0.0)
    book = make_book(cache, store, clock)
    for application_id in range(200):
        await book.limits(application_id)
    assert store.reads == 200  # each read once
    for _ in range(5):
        clock.advance(1.5)
        cache.reads.clear()
        for application_id in range(200):
            assert (book.memoized(application_id) or await book.limits(application_id)).writes.burst == 200
        assert cache.reads == [VERSION_KEY]  # one read a second for all 200
    assert store.reads == 200


async def test_a_change_made_elsewhere_reaches_this_process_within_a_second() -> None:
    cache, store, clock = CountingCache(), Overrides(), FakeClock(0.0)
    here, there = make_book(cache, store, clock), make_book(cache, store, clock)
    assert (await here.limits(7)).writes.burst == 200
    await there.set(7, {"writes_burst": 5})
    assert (await there.limits(7)).writes.burst == 5  # at once where it was made
    assert here.memoized(7).writes.burst == 200  # type: ignore[union-attr]
    clock.advance(1.01)
    assert here.memoized(7) is None
    assert (await here.limits(7)).writes.burst == 5


async def test_without_the_version_key_memos_are_kept_a_bounded_time() -> None:
    cache, store, clock = CountingCache(), Overrides(), FakeClock(0.0)
    book = make_book(cache, store, clock)
    await book.limits(1)
    store.stored[1] = {"reads_burst": 3}  # changed behind the cache's back, and the key lost
    cache.values.clear()
    for _ in range(29):
        clock.advance(1.01)
        await book.limits(2)
        cache.values.pop(VERSION_KEY)
    assert (await book.limits(1)).reads.burst == 400  # young enough to be kept
    clock.advance(1.5)
    cache.values.clear()
    assert (await book.limits(1)).reads.burst == 3


async def test_requests_while_the_version_is_read_use_the_memos_and_read_it_once() -> None:
    cache, store, clock = CountingCache(), Overrides(), FakeClock(0.0)
    book = make_book(cache, store, clock)
    await book.limits(1)
    clock.advance(1.5)  # the version is due
    cache.answering.clear()  # a Redis round trip that takes a while
    cache.reads.clear()
    first = asyncio.ensure_future(book.limits(1))
    await asyncio.sleep(0)  # it is on its way to the cache
    async with asyncio.timeout(5):  # the requests of the same moment: no read, no wait
        for _ in range(64):
            assert (book.memoized(1) or await book.limits(1)).writes.burst == 200
    cache.answering.set()
    assert (await first).writes.burst == 200
    assert cache.reads == [VERSION_KEY]


async def test_a_request_that_waited_seconds_for_the_version_is_counted_at_its_own_time() -> None:
    """A Redis cut off stalls the one version read for seconds while the others go on (local
    buckets, memos): the stalled request is then counted now, not at the time it started."""
    cache, clock = CountingCache(), FakeClock(0.0)
    limiter = Limiter(one_policy_book(Policy("writes", 1000, 1000), clock, cache), None, monotonic=clock)  # 1 s deep
    await limiter.admit(1, "writes")
    clock.advance(1.5)  # the version is due
    cache.answering.clear()  # Redis cut off
    stalled = asyncio.ensure_future(limiter.admit(1, "writes"))
    await asyncio.sleep(0)
    clock.advance(3.0)
    async with asyncio.timeout(5):
        for _ in range(10):  # the others meanwhile, from the memo, at the clock's time
            await limiter.admit(1, "writes")
    cache.answering.set()
    await stalled  # admitted: not RateLimited
