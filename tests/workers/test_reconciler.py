"""The reconciler's loop waits out an outage of its store or lock instead of crashing."""

from __future__ import annotations

import asyncio

from chatd.domain import CountsReconciled, NumberScope
from chatd.errors import BackendUnavailable
from chatd.numbering import NumberRequest, Taken
from chatd.ports import Backends
from chatd.workers import reconciler as reconciling
from chatd.workers.reconciler import Reconciler
from tests.factories import eventually


class StoreDownAtFirst:
    """A store whose first ``outages`` folds meet a full disk."""

    def __init__(self, outages: int):
        self.outages = outages
        self.folds = 0

    async def reconcile_counts(self, limit: int = 10_000) -> CountsReconciled:
        if self.outages:
            self.outages -= 1
            raise BackendUnavailable("sqlite disk_full (test)", backend="sqlite", cause="disk_full")
        self.folds += 1
        return CountsReconciled(0, [])

    async def forget_idempotency_keys(self, now: float, limit: int = 10_000) -> int:
        return 0


class FreeLock:
    def __init__(self) -> None:
        self.held = False

    async def acquire(self, name: str, owner: str, ttl_seconds: float) -> bool:
        self.held = True
        return True

    async def release(self, name: str, owner: str) -> None:
        self.held = False


async def _nothing(tokens: list[str]) -> None:
    pass


async def test_an_outage_is_waited_out_in_the_loop_with_a_growing_bounded_wait(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(reconciling, "FIRST_OUTAGE_WAIT", 0.01)
    waits: list[float] = []
    sleep = reconciling.sleep_unless_stopping

    async def recorded(stopping: asyncio.Event, seconds: float) -> bool:
        waits.append(seconds)
        return await sleep(stopping, min(seconds, 0.01))

    monkeypatch.setattr(reconciling, "sleep_unless_stopping", recorded)
    store, lock = StoreDownAtFirst(outages=4), FreeLock()
    reconciler = Reconciler(store, lock, interval=0.05, forget_applications=_nothing)  # type: ignore[arg-type]
    stopping = asyncio.Event()
    running = asyncio.create_task(reconciler.run(stopping))
    try:
        await eventually(lambda: _true(store.folds >= 2), timeout=10)
        assert not running.done(), "the outage ended the reconciler's loop"
    finally:
        stopping.set()
        await asyncio.wait_for(running, 5)
    assert store.outages == 0 and not lock.held  # the lock was given back after each failed run
    # 0.01, 0.02, 0.04, then the interval bounds it; after a run, the interval again.
    assert waits[:5] == [0.01, 0.02, 0.04, 0.05, 0.05]


async def _true(value: bool) -> bool:
    return value


async def test_a_run_sweeps_expired_idempotency_keys(backends: Backends) -> None:
    store = backends.store
    chat = NumberScope(1, 1)
    reconciler = Reconciler(store, backends.lock, interval=1.0, forget_applications=_nothing)
    now = reconciler.clock()
    assert await store.take_numbers([NumberRequest(chat, "old", "f")], now - 100, 60) == [Taken(1)]
    assert await store.take_numbers([NumberRequest(chat, "live", "f")], now, 60) == [Taken(2)]
    assert await reconciler.reconcile_once()
    assert await store.forget_idempotency_keys(now) == 0  # the run swept the expired one already
    assert await store.take_numbers([NumberRequest(chat, "live", "f")], now, 60) == [Taken(2, replayed=True)]
