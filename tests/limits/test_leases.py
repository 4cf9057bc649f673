"""Leases: a busy bucket's requests admitted from tokens taken ahead from the shared one, and no more.

The process never admits what the shared bucket did not hand out; a lease grows only while the
last one was used up in time, shrinks when one lapsed, and never passes its cap. On the real set,
a tenant's steady requests to one process cost far fewer Redis checks than requests.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from chatd.domain import Hit
from chatd.limits.leases import LEASE_SECONDS, Leases
from chatd.limits.limiter import Limiter
from chatd.limits.policies import Policy
from tests.conftest import Api
from tests.factories import FakeClock
from tests.limits.test_book import one_policy_book


def test_a_lease_grows_while_used_up_and_shrinks_when_it_lapses() -> None:
    clock = FakeClock(100.0)
    leases = Leases(clock)
    policy = Policy("writes", 1000, 1000)  # cap: min(256, 1000 // 16, 1000 * 0.5) = 62
    sizes = []
    for _ in range(10):
        want = leases.want("k", policy)
        sizes.append(want)
        leases.record("k", Hit(True, 0.0, 0.01, want), policy, want)
        while leases.take("k", clock.now) is not None:  # used up at once
            pass
    assert sizes == [1, 2, 4, 8, 16, 32, 62, 62, 62, 62]
    leases.record("k", Hit(True, 0.0, 0.01, 62), policy, 62)
    assert leases.take("k", clock.now) is not None
    clock.advance(LEASE_SECONDS)  # it lapsed with 60 left: they are not handed out, and the next is smaller
    assert leases.take("k", clock.now) is None and leases.want("k", policy) == 31


def test_a_lease_hands_out_what_was_taken_and_no_more() -> None:
    leases = Leases(FakeClock(0.0))
    policy = Policy("writes", 1000, 1000)
    lease = leases.record("k", Hit(True, 0.0, 0.5, 5), policy, 5)  # the request, and 4 ahead
    assert lease.tokens == 4
    assert [leases.take("k", 0.0) is not None for _ in range(6)] == [True, True, True, True, False, False]
    # What the answer states: the shared bucket's 500 left after the 5, plus the ones still leased.
    assert leases.left(lease, 0.0) == (500, 1)


def test_small_buckets_are_never_leased() -> None:
    leases = Leases(FakeClock(0.0))
    policy = Policy("writes", 100, 15)  # a sixteenth of the burst is less than one
    leases.record("k", Hit(True, 0.0, 0.01, 1), policy, 1)
    assert leases.want("k", policy) == 1


async def test_steady_requests_to_one_process_cost_fewer_shared_checks(make_api: Any, backend_set: str) -> None:
    api: Api = await make_api(rate_writes_per_second=100, rate_writes_burst=1000)  # leases of up to 10
    limiter = api.service.limiter
    token = await api.create_application()
    chat = await api.create_chat(token)
    checks = 0
    if limiter.shared is not None:
        hit = limiter.shared.hit

        async def counted(*args: Any) -> Hit:
            nonlocal checks
            checks += 1
            return await hit(*args)

        limiter.shared.hit = counted  # type: ignore[method-assign]
    started = time.monotonic()
    for number in range(300):
        response = await api.client.post(f"/applications/{token}/chats/{chat}/messages", json={"content": "x"})
        assert response.status == 201
        left = int(response.headers["RateLimit"].split(";r=")[1].split(";")[0])
        # Never more than the bucket holds: less the chat and these, plus what it refilled meanwhile.
        assert left <= 1000 - 2 - number + 100 * (time.monotonic() - started) + 1
    if backend_set == "real":
        assert 0 < checks < 300 // 3, checks  # leases of up to 10: most requests asked Redis nothing


def test_checks_made_together_lease_once_and_lose_nothing() -> None:
    leases = Leases(FakeClock(0.0))
    policy = Policy("writes", 1000, 1000)
    leases.record("k", Hit(True, 0.0, 0.01, 8), policy, 8)
    while leases.take("k", 0.0) is not None:  # used up: the next lease may grow
        pass
    first = leases.want("k", policy)
    leases.asking("k", True)
    others = [leases.want("k", policy) for _ in range(5)]  # the same turn, while the first is out
    assert first == 16 and others == [1] * 5
    for _ in range(5):  # the others come back first, with a token each: nothing to keep
        leases.record("k", Hit(True, 0.0, 0.01, 1), policy, 1)
    lease = leases.record("k", Hit(True, 0.0, 0.02, 16), policy, 16)
    leases.asking("k", False)
    assert lease.tokens == 15 and lease.size == 16
    # A lease taken while tokens are still held adds to them.
    assert leases.record("k", Hit(True, 0.0, 0.03, 4), policy, 4).tokens == 15 + 3


class SlowBucket:
    """A shared bucket (``RateCounter``) that answers when told to, counting its checks and tokens."""

    def __init__(self) -> None:
        self.checks = 0
        self.taken = 0
        self.answer = asyncio.Event()

    async def hit(self, key: str, interval: float, capacity: float, want: int = 1) -> Hit:
        self.checks += 1
        await self.answer.wait()
        self.taken += want
        return Hit(True, 0.0, 0.01, want)


async def test_checks_that_find_the_lease_empty_while_it_is_refilled_wait_for_it() -> None:
    shared = SlowBucket()
    policy = Policy("writes", 1_000_000, 1_000_000)
    limiter = Limiter(one_policy_book(policy, FakeClock(0.0)), shared)
    key = f"1:{policy.key}"
    limiter.leases.record(key, Hit(True, 0.0, 0.01, 64), policy, 64)  # a lease of 64, used up
    while limiter.leases.take(key, limiter.monotonic()) is not None:
        pass
    admits = [asyncio.ensure_future(limiter.admit(1, "writes")) for _ in range(100)]
    await asyncio.sleep(0)  # all on their way: one asks for the next lease (128), the others wait
    assert shared.checks == 1
    shared.answer.set()
    await asyncio.gather(*admits)
    # 100 admitted from that one check; nothing admitted that the shared bucket did not hand out.
    assert shared.checks == 1 and shared.taken == 128
    assert limiter.leases.take(key, limiter.monotonic()) is not None


async def test_the_next_lease_is_asked_for_when_a_quarter_is_left() -> None:
    shared = SlowBucket()
    shared.answer.set()
    policy = Policy("writes", 1_000_000, 1_000_000)
    limiter = Limiter(one_policy_book(policy, FakeClock(0.0)), shared)
    key = f"1:{policy.key}"
    limiter.leases.record(key, Hit(True, 0.0, 0.01, 64), policy, 64)  # 63 left after its request
    for _ in range(63 - 17):
        await limiter.admit(1, "writes")
    assert shared.checks == 0
    await limiter.admit(1, "writes")  # it leaves 16, a quarter: it asks for the next lease, of 128
    assert shared.checks == 1 and shared.taken == 128
    for _ in range(16 + 128 - 33):  # the requests after it find tokens, down to the next quarter
        await limiter.admit(1, "writes")
    assert shared.checks == 1
    await limiter.admit(1, "writes")
    assert shared.checks == 2 and shared.taken == 128 + 256
