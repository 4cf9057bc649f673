"""The Cache and Lock contracts, embedded and on Redis."""

from __future__ import annotations

import pytest

from chatd.ports import Backends
from tests.conftest import Namespace
from tests.factories import eventually


@pytest.fixture
def ports() -> tuple[str, ...]:
    """Only the cache and lock on the real servers: nothing else is created for these tests."""
    return ("cache", "lock")


async def test_cache_get_set_delete(backends: Backends) -> None:
    cache = backends.cache
    assert await cache.get("a") is None
    await cache.set("a", b"1", 60)
    assert await cache.get("a") == b"1"
    await cache.set("a", b"2", 60)  # a set replaces
    assert await cache.get("a") == b"2"
    await cache.set("b", b"3", 60)
    await cache.delete("a")
    assert (await cache.get("a"), await cache.get("b")) == (None, b"3")


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
