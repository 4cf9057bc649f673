"""Which server answers the GET routes' reads when a replica is configured (``ReplicaReads``).

The routing on its own, with stand-in stores and a clock this test moves; the real replica of the
local cluster (lag read from SHOW SLAVE STATUS, reads served by it) is in tests/cluster.
"""

from __future__ import annotations

from typing import Any

from chatd.backends.replica_reads import CHECK_EVERY_SECONDS, ReplicaReads
from chatd.errors import BackendUnavailable


class Source:
    """A stand-in store that answers ``get_chat`` with its own name, or fails."""

    def __init__(self, name: str, lag: float | None = 0.0):
        self.name = name
        self.lag = lag
        self.failing = False
        self.checks = 0
        self.opened = 0

    async def open(self) -> None:
        self.opened += 1

    async def replication_lag(self) -> float | None:
        self.checks += 1
        if self.failing:
            raise BackendUnavailable("replica down")
        return self.lag

    async def get_chat(self, application_id: int, number: int) -> Any:
        if self.failing:
            raise BackendUnavailable("replica down")
        return self.name


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def reads(replica: Source, clock: Clock, max_lag: float = 5.0) -> ReplicaReads:
    return ReplicaReads(Source("primary"), replica, max_lag=max_lag, monotonic=clock)  # type: ignore[arg-type]


async def test_a_replica_that_keeps_up_answers() -> None:
    replica, clock = Source("replica", lag=2.0), Clock()
    routed = reads(replica, clock)
    assert await routed.get_chat(1, 1) == "replica"
    assert replica.opened == 1


async def test_a_replica_that_lags_past_the_limit_or_stopped_sends_reads_to_the_primary() -> None:
    replica, clock = Source("replica", lag=6.0), Clock()
    routed = reads(replica, clock)
    assert await routed.get_chat(1, 1) == "primary"
    replica.lag = None  # replication stopped
    clock.now += CHECK_EVERY_SECONDS
    assert await routed.get_chat(1, 1) == "primary"
    replica.lag = 0.0  # caught up: back within a second
    clock.now += CHECK_EVERY_SECONDS
    assert await routed.get_chat(1, 1) == "replica"


async def test_the_lag_is_looked_at_once_a_second_at_most() -> None:
    replica, clock = Source("replica"), Clock()
    routed = reads(replica, clock)
    for _ in range(50):
        await routed.get_chat(1, 1)
    assert replica.checks == 1
    clock.now += CHECK_EVERY_SECONDS
    await routed.get_chat(1, 1)
    assert replica.checks == 2


async def test_a_read_the_replica_fails_is_answered_by_the_primary_never_an_error() -> None:
    replica, clock = Source("replica"), Clock()
    routed = reads(replica, clock)
    assert await routed.get_chat(1, 1) == "replica"
    replica.failing = True
    assert await routed.get_chat(1, 1) == "primary"  # the failed read, answered
    assert await routed.get_chat(1, 1) == "primary"  # and the next ones, until a check finds it back
    clock.now += CHECK_EVERY_SECONDS
    assert await routed.get_chat(1, 1) == "primary"  # the check fails too
    replica.failing = False
    clock.now += CHECK_EVERY_SECONDS
    assert await routed.get_chat(1, 1) == "replica"
