"""The decision (chatd.limits.gcra), the policies' fields, and both counters that run it.

The in-process counter and the Redis script are held to the same decisions: a burst admitted
whole, the next refused with the wait for one interval, the bucket refilled at the rate.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatd.backends.redis_backends import RedisConnection
from chatd.backends.redis_limits import RedisRates
from chatd.limits.gcra import decide, remaining
from chatd.limits.local import LocalRates
from chatd.limits.policies import Policy, StreamPolicy, Verdict, validate_overrides
from chatd.settings import Settings
from tests.conftest import REAL, REDIS_URL, unique_name
from tests.factories import eventually


def test_a_burst_is_admitted_whole_then_one_per_interval() -> None:
    interval, capacity, now, tat = 0.1, 0.5, 1000.0, 1000.0  # 10 per second, bursts of 5
    admitted = []
    for _ in range(7):
        hit, tat = decide(tat, now, interval, capacity)
        admitted.append((hit.allowed, remaining(hit, interval, capacity)))
    assert admitted == [(True, 4), (True, 3), (True, 2), (True, 1), (True, 0), (False, 0), (False, 0)]
    refused, _ = decide(tat, now, interval, capacity)
    assert math.isclose(refused.wait, 0.1) and math.isclose(refused.reset, 0.5)
    # One interval later exactly one more is admitted; a full refill later, the whole burst.
    hit, after = decide(tat, now + 0.1, interval, capacity)
    assert hit.allowed and remaining(hit, interval, capacity) == 0
    assert not decide(after, now + 0.1, interval, capacity)[0].allowed
    hit, _ = decide(tat, now + 0.5, interval, capacity)
    assert hit.allowed and remaining(hit, interval, capacity) == 4


def test_a_refusal_leaves_the_bucket_as_it_was() -> None:
    _, tat = decide(0.0, 10.0, 1.0, 1.0)
    refused, unchanged = decide(tat, 10.0, 1.0, 1.0)
    assert not refused.allowed and unchanged == tat


@pytest.mark.parametrize(
    ("per_second", "burst", "header"),
    [(100, 200, '"writes";q=200;w=2'), (3, 10, '"writes";q=10;w=4'), (50, 10, '"writes";q=10;w=1')],
)
def test_the_policy_field_never_states_more_than_the_bucket_admits(per_second: float, burst: int, header: str) -> None:
    policy = Policy("writes", per_second, burst)
    assert policy.header == header
    window = int(header.rsplit("w=", 1)[1])
    assert burst / window <= max(per_second, burst / window)  # q/w paces at most the bucket's rate or its burst
    assert burst + per_second * window >= burst  # and no window admits less than q


def test_the_fields_of_a_verdict() -> None:
    verdict = Verdict(Policy("reads", 10, 20), True, 19, 1)
    assert verdict.headers() == {"RateLimit-Policy": '"reads";q=20;w=2', "RateLimit": '"reads";r=19;t=1'}
    streams = Verdict(StreamPolicy(3), False, 0, 1)
    assert streams.headers() == {
        "RateLimit-Policy": '"streams";q=3;qu="concurrent-requests"',
        "RateLimit": '"streams";r=0',
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "must be an object"),
        ({"reads": 1}, "unknown field 'reads'"),
        ({"reads_per_second": 0}, "from 0.001"),
        ({"reads_per_second": "5"}, "must be a number"),
        ({"reads_burst": 1.5}, "whole number"),
        ({"reads_burst": 0}, "from 1"),
        ({"streams": -1}, "from 0"),
        ({"writes_burst": True}, "must be a number"),
        ({"searches_per_second": 2_000_000}, "1,000,000"),
    ],
)
def test_bad_overrides_are_refused_with_the_reason(body: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_overrides(body)


def test_overrides_keep_what_they_name() -> None:
    assert validate_overrides({"reads_per_second": 2, "streams": 0, "writes_burst": None}) == {
        "reads_per_second": 2.0,
        "streams": 0,
    }


@pytest.fixture(params=["local", REAL])
async def counter(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LocalRates | RedisRates]:
    if request.param == "local":
        yield LocalRates()
        return
    connection = RedisConnection(REDIS_URL, prefix=f"{unique_name()}:")
    await connection.open()
    try:
        yield RedisRates(connection)
    finally:
        await connection.destroy()
        await connection.close()


async def test_both_counters_admit_a_burst_then_refill(counter: LocalRates | RedisRates) -> None:
    interval, capacity = 1 / 20, 3 / 20  # 20 per second, bursts of 3
    hits = [await counter.hit("app:writes", interval, capacity) for _ in range(5)]
    assert [hit.allowed for hit in hits] == [True, True, True, False, False]
    assert 0 < hits[3].wait <= interval + 0.01 and hits[2].reset <= capacity + 0.01
    # Another key is another bucket.
    assert (await counter.hit("other:writes", interval, capacity)).allowed

    async def refilled() -> bool:
        return (await counter.hit("app:writes", interval, capacity)).allowed

    await eventually(refilled, timeout=5)


async def test_checks_made_together_are_decided_one_after_the_other(counter: LocalRates | RedisRates) -> None:
    import asyncio

    interval, capacity = 10.0, 40.0  # a burst of 4, and no refill within the test
    hits = await asyncio.gather(*(counter.hit("together", interval, capacity) for _ in range(10)))
    assert sum(hit.allowed for hit in hits) == 4


def test_the_inline_check_of_the_embedded_default_decides_as_gcra_does() -> None:
    import random

    chooser = random.Random(20)
    for interval, capacity in ((0.1, 0.5), (1 / 3, 10 / 3), (0.001, 0.001)):
        inline, general = LocalRates(), {"tat": 50.0}
        now = 50.0
        for _ in range(500):
            now += chooser.choice((0.0, 0.0, interval / 3, interval, capacity))
            allowed, left, seconds = inline.check("k", interval, capacity, now)
            hit, general["tat"] = decide(general["tat"], now, interval, capacity)
            stated = math.ceil(hit.wait if not hit.allowed else hit.reset)
            assert (allowed, left, seconds) == (hit.allowed, remaining(hit, interval, capacity), stated)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CHATD_RATE_READS_PER_SECOND", "0", "CHATD_RATE_READS_PER_SECOND: 'reads_per_second' must be from 0.001"),
        ("CHATD_RATE_WRITES_BURST", "0", "CHATD_RATE_WRITES_BURST: 'writes_burst' must be from 1"),
        ("CHATD_RATE_STREAMS", "2000000", "CHATD_RATE_STREAMS: 'streams' must be from 0 to 1,000,000"),
    ],
)
def test_default_limits_out_of_bounds_stop_chatd_at_start(variable: str, value: str, message: str) -> None:
    """The CHATD_RATE_* defaults are held to the bounds of an admin's override."""
    with pytest.raises(ValueError, match=message):
        Settings.from_env({variable: value})
    assert Settings.from_env({"CHATD_RATE_STREAMS": "0"}).rate_streams == 0  # no live streams: allowed
