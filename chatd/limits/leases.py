"""Tokens an api process took from a shared (Redis) bucket ahead of its requests.

A tenant sending many requests to one process would otherwise cost a Redis round trip each,
about 15% of the create path's CPU in the api (py-spy, real set, wrk -c64): redis-py's work per
command, even with the checks of a loop turn sent together. So a check may take several tokens
at once, and the process admits the next requests of that bucket from them, with no I/O.

Nothing is admitted that the shared bucket did not hand out: a lease is taken from it first. What
a lease costs is the other way round: tokens leased by one process and not used before the lease
ends (``LEASE_SECONDS``) are lost to the tenant, and while one process holds some another may
refuse. So a lease starts at one token and doubles only while the last one was used up in time
(halving when one lapsed), and never holds more than a sixteenth of the burst, nor more than
the bucket refills in ``LEASE_SECONDS``: a tenant well under its limits, or spread over
processes at a trickle, leases one token at a time, which is exact.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from chatd.domain import Hit
from chatd.limits.gcra import remaining
from chatd.limits.policies import Policy

LEASE_SECONDS = 0.5
MAX_LEASE = 256
_MAX_KEYS = 100_000


@dataclass
class Lease:
    tokens: int  # left to hand out in this process
    expires: float  # monotonic
    size: int  # what the next lease asks for
    shared_left: int  # what the shared bucket held when the lease was taken (after it)
    full_at: float  # monotonic: when the shared bucket would be full again


class Leases:
    def __init__(self, monotonic: Callable[[], float]):
        self.monotonic = monotonic
        self._leases: OrderedDict[str, Lease] = OrderedDict()
        # Checks of each key on their way to Redis: the requests that find the lease empty while
        # one is asking for the next ask for their own token only, so that a turn of the loop
        # with many of them does not take a lease each (and drain the bucket into one process).
        self._asking: dict[str, int] = {}

    def take(self, key: str, now: float) -> Lease | None:
        """One token of the lease of ``key``, if it has one left at ``now`` (then the lease), else None."""
        lease = self._leases.get(key)
        if lease is None or lease.tokens < 1 or now >= lease.expires:
            return None
        lease.tokens -= 1
        return lease

    def asking(self, key: str, on: bool) -> None:
        """A check of ``key`` leaves for the shared bucket (``on``), or is back."""
        count = self._asking.get(key, 0) + (1 if on else -1)
        if count > 0:
            self._asking[key] = count
        else:
            self._asking.pop(key, None)

    def want(self, key: str, policy: Policy) -> int:
        """How many tokens the next check of ``key`` asks the shared bucket for."""
        lease = self._leases.get(key)
        if lease is None or key in self._asking:
            return 1
        if lease.tokens > 0 and self.monotonic() >= lease.expires:  # it lapsed unused: ask for fewer
            return max(1, lease.size // 2)
        return min(lease.size * 2, _cap(policy))

    @staticmethod
    def running_low(lease: Lease) -> bool:
        """True once per lease of four or more, when a quarter of it is left: time to ask for the next."""
        return lease.size >= 4 and lease.tokens == lease.size // 4

    def record(self, key: str, hit: Hit, policy: Policy, asked: int, used: int = 1) -> Lease:
        """After a shared check that admitted with ``hit.taken`` tokens: all but ``used`` as this key's lease.

        Tokens still held in time are kept with them: whatever Redis handed out is handed on.
        """
        now = self.monotonic()
        held = self._leases.get(key)
        kept = held.tokens if held is not None and now < held.expires else 0
        lease = Lease(
            tokens=kept + hit.taken - used,
            expires=now + LEASE_SECONDS,
            # A single token asked beside another check keeps the size the lease had grown to.
            size=asked if held is None or asked > 1 else held.size,
            shared_left=remaining(hit, policy.interval, policy.capacity),
            full_at=now + hit.reset,
        )
        self._leases[key] = lease
        self._leases.move_to_end(key)
        if len(self._leases) > _MAX_KEYS:
            self._leases.popitem(last=False)
        return lease

    def left(self, lease: Lease, now: float) -> tuple[int, int]:
        """What the answer states: requests available at once (shared and leased), seconds until full."""
        return lease.shared_left + lease.tokens, max(0, math.ceil(lease.full_at - now))


def _cap(policy: Policy) -> int:
    return max(1, min(MAX_LEASE, policy.burst // 16, int(policy.per_second * LEASE_SECONDS)))
