"""The cache as an optimisation, never a dependency: reads go to the store while it is down.

A cache read or write that meets an outage (``BackendUnavailable``: Redis unreachable, a
partition that answers nothing until the socket timeout, OOM, a read-only replica...) is
skipped, and so is every cache read and write for ``cooldown`` seconds after it, so a partitioned
Redis costs one request a socket timeout, not every request. Invalidations (``delete``) are not
skipped: a rename that could not drop the cached name fails with 503 (retrying it is harmless),
rather than answering while the old name stays cached for a TTL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from chatd import metrics
from chatd.errors import BackendUnavailable
from chatd.ports import Cache

logger = logging.getLogger(__name__)


class OptionalCache:
    """``get`` and ``set`` of a Cache that an outage turns into misses for ``cooldown`` seconds."""

    def __init__(self, cache: Cache, cooldown: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.cache = cache
        self.cooldown = cooldown
        self.clock = clock
        self._skip_until = 0.0

    @property
    def skipping(self) -> bool:
        return self.clock() < self._skip_until

    async def get(self, key: str) -> bytes | None:
        if self.skipping:
            return None
        try:
            return await self.cache.get(key)
        except BackendUnavailable as exc:
            self._outage(exc)
            return None

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        if self.skipping:
            return
        try:
            await self.cache.set(key, value, ttl_seconds)
        except BackendUnavailable as exc:
            self._outage(exc)

    async def delete(self, key: str) -> None:
        await self.cache.delete(key)

    def _outage(self, exc: BackendUnavailable) -> None:
        if not self.skipping:
            logger.warning("cache unavailable (%s); reading from the store for %g s", exc, self.cooldown)
        metrics.backend_error(exc)
        self._skip_until = self.clock() + self.cooldown
