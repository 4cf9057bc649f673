"""What the service calls once per request: count it against its application's limit, or refuse it.

Counts go to the shared counters (Redis) when there are some, else to this process's own; a
process admits a busy bucket's next requests from tokens it leased from Redis ahead of them
(``leases``). When
Redis cannot answer (down, or slower than the counter's timeout, half a second), the limiter **fails
open to a local limit**: for ``COOLDOWN_SECONDS`` every check is made against this process's
own buckets (the same policy, counted in this process only), then Redis is tried again. So a
Redis outage never refuses a request that the limits would admit, never answers 500, and still
bounds a flood per process. It is logged once per cooldown and counted as a backend error.

A refusal raises ``RateLimited`` (429 ``rate_limited`` with ``Retry-After`` and the RateLimit
fields), counts in ``chatd_rate_limited_total{policy}``, and is logged with the application's
id the first time that application is refused, then at most once a minute per application and
process, with how many were refused since the last line.

A refusal is *held* before it is answered, for ``hold_seconds`` (``CHATD_RATE_REFUSAL_HOLD_SECONDS``,
1 s; never past its Retry-After). Why: a runaway client loop sends its next request as soon as
it has the answer, so a 429 answered in microseconds only makes it spin faster, and a process
busy answering one tenant's 429s is as lost to the others as one busy serving them (measured:
bench (f)). Held, each of its connections costs a timer and at most one request a second. The
hold is drawn between half of it and all of it: a flood's connections, refused together, would
otherwise come back together, and take the tokens that built up meanwhile as one burst that the
other tenants' creations queue behind (measured too). At most ``MAX_HELD`` refusals are held at
once per process; past that they are answered at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any

from chatd import metrics
from chatd.domain import Hit
from chatd.errors import BackendUnavailable, RateLimited
from chatd.limits import policies
from chatd.limits.book import LimitBook
from chatd.limits.leases import Leases
from chatd.limits.local import LocalRates, LocalStreams
from chatd.limits.policies import Policy, Verdict
from chatd.ports import RateCounter, StreamCounter

logger = logging.getLogger(__name__)

COOLDOWN_SECONDS = 5.0
LOG_EVERY_SECONDS = 60.0
MAX_HELD = 10_000
_MAX_LOGGED = 10_000


class Limiter:
    def __init__(
        self,
        book: LimitBook,
        rates: RateCounter | None = None,
        streams: StreamCounter | None = None,
        *,
        hold_seconds: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.book = book
        self.hold_seconds = hold_seconds
        self.held = 0
        self.monotonic = monotonic
        self.local = LocalRates(monotonic)
        self.leases = Leases(monotonic)
        self.local_streams = LocalStreams()
        self.shared = rates
        self.shared_streams = streams
        self._skip_until = 0.0
        # Per key, the shared check that will bring its next lease, while it is on its way.
        self._refilling: dict[str, asyncio.Event] = {}
        self._stream_ids = itertools.count(1)
        self._logged: OrderedDict[tuple[int, str], tuple[float, int]] = OrderedDict()

    async def admit(self, application_id: int, policy_name: str) -> None:
        """Count one request of ``policy_name``; raise RateLimited if the application is over it."""
        now = self.monotonic()
        limits = self.book.memoized(application_id, now)
        if limits is None:
            limits = await self.book.limits(application_id)
            # That read may have taken seconds (a Redis slow or cut off): a time from before it,
            # behind the buckets' by more than a burst, would refuse the request.
            now = self.monotonic()
        policy = limits.rate(policy_name)
        key = f"{application_id}:{policy.key}"
        if self.shared is None or now < self._skip_until:
            verdict = Verdict(policy, *self.local.check(key, policy.interval, policy.capacity, now))
        elif (lease := self.leases.take(key, now)) is not None:
            verdict = Verdict(policy, True, *self.leases.left(lease, now))
            if self.leases.running_low(lease):
                # This request's token is taken; it asks for the next lease before this one runs
                # out, so that the requests after it find tokens rather than wait for them.
                await self._ask(key, policy, used=0)
        else:
            verdict = await self._shared_verdict(key, policy)
        policies.current.set(verdict)
        if not verdict.allowed:
            await self._refuse(application_id, verdict)

    async def _shared_verdict(self, key: str, policy: Policy) -> Verdict:
        refilling = self._refilling.get(key)
        if refilling is not None:
            # The lease ran out and its next one is on its way: wait for it rather than ask Redis
            # too (measured: a busy tenant at 5,000 creations a second on one process sent one
            # request in seven to Redis, those of each round trip that found the lease empty).
            await refilling.wait()
            now = self.monotonic()
            if now < self._skip_until:
                return Verdict(policy, *self.local.check(key, policy.interval, policy.capacity, now))
            lease = self.leases.take(key, now)
            if lease is not None:
                return Verdict(policy, True, *self.leases.left(lease, now))
        verdict = await self._ask(key, policy, used=1)
        assert verdict is not None
        return verdict

    async def _ask(self, key: str, policy: Policy, used: int) -> Verdict | None:
        """A check of the shared bucket for ``used`` tokens (1: this request's; 0: only the next
        lease) that keeps the rest as the key's lease. With 0, None when it was not worth asking."""
        assert self.shared is not None
        want = self.leases.want(key, policy)
        if not used and (want <= 1 or key in self._refilling):
            return None  # nothing worth asking for ahead, or the next lease is on its way already
        refilling = None  # the others wait for a lease being brought, if it is the only one
        if want > 1 and key not in self._refilling:
            refilling = self._refilling[key] = asyncio.Event()
        self.leases.asking(key, True)
        try:
            hit = await self.shared.hit(key, policy.interval, policy.capacity, want)
        except (BackendUnavailable, TimeoutError) as exc:
            self._shared_down(exc)
            if not used:
                return None
            return Verdict(policy, *self.local.check(key, policy.interval, policy.capacity, self.monotonic()))
        finally:
            self.leases.asking(key, False)
            if refilling is not None:
                del self._refilling[key]
                refilling.set()
        if not hit.allowed:
            return Verdict(policy, False, 0, _seconds(hit)) if used else None
        lease = self.leases.record(key, hit, policy, want, used)
        return Verdict(policy, True, *self.leases.left(lease, self.monotonic()))

    def _shared_down(self, exc: BaseException) -> None:
        if self.monotonic() >= self._skip_until:
            logger.warning(
                "rate limits: Redis did not answer (%s); counting in this process only for %g s",
                exc or type(exc).__name__,
                COOLDOWN_SECONDS,
            )
        self._skip_until = self.monotonic() + COOLDOWN_SECONDS
        outage = exc if isinstance(exc, BackendUnavailable) else BackendUnavailable(str(exc), backend="redis")
        metrics.backend_error(outage)

    @asynccontextmanager
    async def stream(self, application_id: int) -> AsyncIterator[Verdict]:
        """A live-stream slot of the application for the block; RateLimited if all are taken."""
        limits = self.book.memoized(application_id) or await self.book.limits(application_id)
        policy = limits.streams
        key, member = str(application_id), str(next(self._stream_ids))
        counter = await self._stream_counter()
        try:
            taken, held = await counter.acquire(key, member, policy.concurrent)
        except BackendUnavailable as exc:
            self._shared_down(exc)
            counter = self.local_streams
            taken, held = await counter.acquire(key, member, policy.concurrent)
        verdict = Verdict(policy, taken, max(0, policy.concurrent - held), 0 if taken else 1)
        policies.current.set(verdict)
        if not taken:
            await self._refuse(application_id, verdict)
        try:
            yield verdict
        finally:
            try:
                await counter.release(key, member)
            except BackendUnavailable:
                pass  # its lease lapses on its own: this process stops renewing it

    async def _stream_counter(self) -> StreamCounter:
        if self.shared_streams is None or self.monotonic() < self._skip_until:
            return self.local_streams
        return self.shared_streams

    async def refresh_streams(self) -> None:
        """Renew this process's stream leases (a background loop calls it every third of a lease)."""
        if self.shared_streams is not None:
            await self.shared_streams.refresh()

    async def _refuse(self, application_id: int, verdict: Verdict) -> None:
        name = verdict.policy.name
        _refused(name).inc()
        self._log_crossing(application_id, name)
        retry_after = str(max(1, verdict.reset))
        hold = min(self.hold_seconds, max(1, verdict.reset)) * random.uniform(0.5, 1.0)
        if hold > 0 and self.held < MAX_HELD:
            self.held += 1
            try:
                await asyncio.sleep(hold)
            finally:
                self.held -= 1
        raise RateLimited(
            f"this application is over its {name} limit ({_described(verdict)}); retry after {retry_after} s",
            headers={"Retry-After": retry_after, **verdict.headers()},
        )

    def _log_crossing(self, application_id: int, name: str) -> None:
        """One line when an application crosses a limit, then at most one a minute while it stays over."""
        now = self.monotonic()
        last, refused = self._logged.get((application_id, name), (-math.inf, 0))
        if now - last < LOG_EVERY_SECONDS:
            self._logged[(application_id, name)] = (last, refused + 1)
            return
        logger.warning(
            "application over its rate limit",
            extra={"application_id": application_id, "policy": name, "refused_since_last_line": refused + 1},
        )
        self._logged[(application_id, name)] = (now, 0)
        self._logged.move_to_end((application_id, name))
        if len(self._logged) > _MAX_LOGGED:
            self._logged.popitem(last=False)


def _seconds(hit: Hit) -> int:
    """Whole seconds for the fields: up to the moment (a refusal's wait, else the bucket's refill)."""
    return math.ceil(hit.wait if not hit.allowed else hit.reset)


def _described(verdict: Verdict) -> str:
    policy = verdict.policy
    if isinstance(policy, Policy):
        return f"{policy.per_second:g} per second, bursts of {policy.burst}"
    return f"{policy.concurrent} at once"


# labels() locks and looks up on every call; there are four policies.
@lru_cache(maxsize=8)
def _refused(policy_name: str) -> Any:
    return metrics.RATE_LIMITED.labels(policy_name)
