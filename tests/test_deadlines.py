"""Request deadlines: a task past its deadline is cancelled once, and only the deadline's cancellation is taken back."""

from __future__ import annotations

import asyncio

import pytest

from chatd.deadlines import Deadlines


async def run_under(deadlines: Deadlines, budget: float, work: asyncio.Future[None]) -> str:
    """What the middleware does: start a deadline, await ``work``, end it; how the wait ended."""
    deadline = deadlines.start(budget)
    expired = False
    try:
        try:
            await work
        finally:
            expired = deadlines.end(deadline)
    except asyncio.CancelledError:
        if not expired:
            raise
        return "deadline"
    return "done"


async def test_a_request_past_its_deadline_is_cancelled_and_answers() -> None:
    deadlines = Deadlines(resolution=0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    never = loop.create_future()
    assert await run_under(deadlines, 0.05, never) == "deadline"
    assert 0.05 <= loop.time() - started < 1.0
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]  # taken back


async def test_requests_within_their_deadline_are_untouched_and_the_sweep_stops() -> None:
    deadlines = Deadlines(resolution=0.01)
    results = await asyncio.gather(*(run_under(deadlines, 5.0, asyncio.sleep(0.02)) for _ in range(100)))
    assert results == ["done"] * 100
    await asyncio.sleep(0.05)  # a sweep or two after the last request ended
    assert deadlines._sweeping is None  # nothing in flight: no timer left running


async def test_shorter_and_longer_budgets_expire_each_at_its_own_time() -> None:
    deadlines = Deadlines(resolution=0.01)
    loop = asyncio.get_running_loop()
    long = asyncio.create_task(run_under(deadlines, 0.3, loop.create_future()))
    await asyncio.sleep(0)
    short = asyncio.create_task(run_under(deadlines, 0.05, loop.create_future()))
    assert await short == "deadline"
    assert not long.done()  # added first, expires later
    assert await long == "deadline"


async def test_a_lifted_deadline_never_fires() -> None:
    deadlines = Deadlines(resolution=0.01)

    async def stream() -> str:
        deadline = deadlines.start(0.02)
        deadlines.lift(deadline)
        await asyncio.sleep(0.1)
        return "streamed" if not deadlines.end(deadline) else "cut"

    assert await stream() == "streamed"


async def test_a_shutdown_during_an_expired_deadline_still_cancels() -> None:
    deadlines = Deadlines(resolution=3600.0)  # sweeps only when the test says so
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(run_under(deadlines, 0.0, loop.create_future()))
    await asyncio.sleep(0)  # the task waits under its deadline
    deadlines._sweep(loop)  # the deadline expires: the task is cancelled...
    task.cancel()  # ... and the server shuts down before the task runs again
    with pytest.raises(asyncio.CancelledError):
        await task
