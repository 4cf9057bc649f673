"""The in-process counters: the embedded default's, and every process's while Redis is down.

Synchronous on purpose: a check that needs no I/O costs no suspension of the request's task.
Each process counts on its own, so several embedded api processes each admit a tenant's full
limit (README "Limits"); the real set counts in Redis, shared.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from chatd.domain import Hit
from chatd.limits.gcra import EPSILON, decide

# Buckets kept at most. Past that the full ones are dropped (a bucket that is full again is the
# same as none), then, if that is not enough, the oldest half: they forget tenants that were
# near their limit, in favour of a flood of new keys. Each process holds one per busy tenant and policy.
MAX_BUCKETS = 100_000


class LocalRates:
    """Token buckets in a dict, one per key."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_buckets: int = MAX_BUCKETS):
        self.clock = clock
        self.max_buckets = max_buckets
        self._tats: dict[str, float] = {}

    def check(self, key: str, interval: float, capacity: float, now: float) -> tuple[bool, int, int]:
        """One request against ``key``: (admitted, requests left at once, whole seconds to state).

        ``gcra.decide`` for one token, with its arithmetic inline: every request of the embedded
        default runs this, and the general form's tuples and calls cost about 3 µs more a request
        on this machine. ``tests/limits/test_gcra.py`` holds the two to the same answers.
        """
        tat = self._tats.get(key, now)
        start = tat if tat > now else now
        ahead = start + interval - now
        if ahead > capacity + EPSILON:
            return False, 0, math.ceil(ahead - capacity)
        self._tats[key] = start + interval
        if len(self._tats) > self.max_buckets:
            self._prune(now)
        return True, int((capacity - ahead) / interval + EPSILON), math.ceil(ahead)

    async def hit(self, key: str, interval: float, capacity: float, want: int = 1) -> Hit:
        now = self.clock()
        hit, tat = decide(self._tats.get(key, now), now, interval, capacity, want)
        if hit.allowed:
            self._tats[key] = tat
            if len(self._tats) > self.max_buckets:
                self._prune(now)
        return hit

    def _prune(self, now: float) -> None:
        self._tats = {key: tat for key, tat in self._tats.items() if tat > now}
        if len(self._tats) > self.max_buckets // 2:
            keys = list(self._tats)
            self._tats = {key: self._tats[key] for key in keys[len(keys) // 2 :]}


class LocalStreams:
    """Live streams open in this process, per key."""

    def __init__(self) -> None:
        self._open: dict[str, set[str]] = {}

    async def acquire(self, key: str, member: str, limit: int) -> tuple[bool, int]:
        members = self._open.setdefault(key, set())
        if len(members) >= limit:
            return False, len(members)
        members.add(member)
        return True, len(members)

    async def release(self, key: str, member: str) -> None:
        members = self._open.get(key)
        if members is not None:
            members.discard(member)
            if not members:
                del self._open[key]

    async def refresh(self) -> None:
        """Nothing to renew: a process's own streams end with it."""
