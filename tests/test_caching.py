"""The cache is an optimisation: an outage turns it into misses for a while, reads go to the store."""

from __future__ import annotations

import pytest

from chatd.caching import OptionalCache
from chatd.errors import BackendUnavailable
from tests.conftest import Api
from tests.factories import FakeClock


class FlakyCache:
    """A cache that fails while ``down``, and counts the calls that reached it."""

    def __init__(self) -> None:
        self.down = False
        self.calls = 0
        self.values: dict[str, bytes] = {}

    def _reach(self) -> None:
        self.calls += 1
        if self.down:
            raise BackendUnavailable("redis timeout (test)", backend="redis", cause="timeout")

    async def get(self, key: str) -> bytes | None:
        self._reach()
        return self.values.get(key)

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        self._reach()
        self.values[key] = value

    async def delete(self, key: str) -> None:
        self._reach()
        self.values.pop(key, None)


async def test_an_outage_is_a_miss_and_the_cache_is_skipped_for_the_cooldown() -> None:
    flaky, clock = FlakyCache(), FakeClock(0.0)
    cache = OptionalCache(flaky, cooldown=5.0, clock=clock)  # type: ignore[arg-type]
    await cache.set("k", b"v", 60)
    flaky.down = True
    assert await cache.get("k") is None  # the outage: a miss, not an error
    calls = flaky.calls
    assert await cache.get("k") is None and flaky.calls == calls  # skipped: no second timeout
    await cache.set("k", b"w", 60)
    assert flaky.calls == calls
    with pytest.raises(BackendUnavailable):
        await cache.delete("k")  # an invalidation is never skipped
    flaky.down = False
    clock.advance(5.0)
    assert await cache.get("k") == b"v"


async def test_reads_are_served_from_the_store_while_the_cache_is_down(api: Api) -> None:
    token = await api.create_application("cached")
    chat = await api.create_chat(token)
    await api.settle()
    backends_cache = api.service.backends.cache

    async def down(*args: object) -> None:
        raise BackendUnavailable("redis unreachable (test)", backend="redis", cause="connection")

    api.service.cache.cache = type("Down", (), {"get": down, "set": down, "delete": down})()
    try:
        assert (await api.get_json(f"/applications/{token}"))["name"] == "cached"
        assert (await api.get_json(f"/applications/{token}/chats/{chat}"))["number"] == chat
        assert await api.create_message(token, chat, "still accepted") == 1
    finally:
        api.service.cache.cache = backends_cache
