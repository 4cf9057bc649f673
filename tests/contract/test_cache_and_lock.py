"""The Counters, Cache and Lock contracts, embedded and on Redis."""

from __future__ import annotations

import asyncio

import pytest

from chatd.ports import Backends
from tests.conftest import Namespace
from tests.factories import eventually


@pytest.fixture
def ports() -> tuple[str, ...]:
    """Only the counters, cache and lock on the real servers: nothing else is created for these tests."""
    return ("counters", "cache", "lock")


async def test_increment_needs_a_seeded_key(backends: Backends) -> None:
    counters = backends.counters
    assert await counters.increment("k") is None
    assert await counters.current("k") is None
    await counters.seed("k", 41)
    assert (await counters.increment("k")).number == 42
    await counters.seed("k", 10)  # a live counter is left alone: never lowered...
    assert await counters.current("k") == 42
    await counters.seed("k", 50)  # ...and never moved up (that would only make gaps)
    assert (await counters.increment("k")).number == 43


async def test_a_recreated_counter_has_a_new_generation(backends: Backends) -> None:
    counters = backends.counters
    await counters.seed("g", 5)
    first = await counters.increment("g")
    assert first is not None and first.generation and await counters.generation("g") == first.generation
    await counters.seed("g", 100)  # seeding a live counter keeps its generation
    assert await counters.generation("g") == first.generation
    await wipe_counters(backends)
    assert await counters.generation("g") is None
    await counters.seed("g", 0)
    again = await counters.increment("g")
    assert again is not None and again.generation != first.generation


async def test_take_gives_each_counter_a_contiguous_range(backends: Backends) -> None:
    counters = backends.counters
    await counters.seed("a", 10)
    await counters.seed("b", 0)
    taken = await counters.take({"a": 5, "b": 1, "missing": 3})
    assert taken["a"] is not None and (taken["a"].first, taken["a"].last) == (11, 15)
    assert taken["b"] is not None and (taken["b"].first, taken["b"].last) == (1, 1)
    assert taken["missing"] is None and await counters.current("missing") is None  # not created
    assert taken["a"].generation == await counters.generation("a")
    assert await counters.generations(["a", "b", "missing"]) == {
        "a": taken["a"].generation,
        "b": taken["b"].generation,
        "missing": None,
    }
    assert (await counters.increment("a")).number == 16  # type: ignore[union-attr]


async def test_concurrent_takes_never_overlap(backends: Backends) -> None:
    await backends.counters.seed("c", 0)
    groups = await asyncio.gather(*(backends.counters.take({"c": size}) for size in range(1, 31)))
    numbers = [n for group in groups for n in range(group["c"].first, group["c"].last + 1)]  # type: ignore[union-attr]
    assert sorted(numbers) == list(range(1, sum(range(1, 31)) + 1))


async def wipe_counters(backends: Backends) -> None:
    """Lose every counter, as a Redis restarted without persistence would."""
    counters = backends.counters
    await (counters.wipe() if hasattr(counters, "wipe") else counters.destroy())  # type: ignore[attr-defined]


async def test_concurrent_increments_hand_out_each_number_once(backends: Backends) -> None:
    await backends.counters.seed("c", 0)
    numbers = [tick.number for tick in await asyncio.gather(*(backends.counters.increment("c") for _ in range(500)))]
    assert sorted(numbers) == list(range(1, 501))  # type: ignore[type-var]


async def test_cache_get_set_add_delete(backends: Backends) -> None:
    cache = backends.cache
    assert await cache.get("a") is None
    await cache.set("a", b"1", 60)
    assert await cache.get("a") == b"1"
    assert await cache.add("a", b"2", 60) is False
    assert await cache.add("b", b"2", 60) is True
    assert await cache.get("b") == b"2"
    await cache.delete("a")
    assert await cache.get("a") is None
    await cache.set_many({"b": b"3", "c": b"4"}, 60)
    assert (await cache.get("b"), await cache.get("c")) == (b"3", b"4")
    assert await cache.add_many({"b": b"x", "d": b"5"}, 60) == {"b": False, "d": True}
    assert await cache.get_many(["b", "d", "none"]) == {"b": b"3", "d": b"5", "none": None}


async def test_lock_has_one_owner_until_released_or_expired(namespace: Namespace, backends: Backends) -> None:
    lock = backends.lock
    assert await lock.acquire("job", "one", 30)
    assert not await lock.acquire("job", "two", 30)
    assert await lock.acquire("job", "one", 30)  # the owner may renew
    await lock.release("job", "two")  # not the owner: nothing happens
    assert not await lock.acquire("job", "two", 30)
    await lock.release("job", "one")
    assert await lock.acquire("job", "two", 0.2)
    assert not await lock.acquire("job", "three", 30)
    # Once the lease runs out another owner gets in, with no release. The embedded lock reads
    # the test's clock; Redis keeps its own time, so there the lease runs out in real time.
    namespace.clock.advance(0.3)
    assert await eventually(lambda: lock.acquire("job", "three", 30), timeout=10)
