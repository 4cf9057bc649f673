"""Live loops stop at shutdown even when a cancel is swallowed once (redis-py, asyncio.timeout on 3.11)."""

from __future__ import annotations

import asyncio

from chatd.live.cancelling import cancel_all, cancel_requested


async def test_a_loop_that_swallowed_a_cancel_is_cancelled_again() -> None:
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()  # as a library turning the cancel into "no message" would
        await asyncio.Event().wait()

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_all([task], wait=0.05), 10)
    assert swallowed.is_set() and task.cancelled()


async def test_cancel_requested_sees_a_cancel_that_became_an_error() -> None:
    seen: list[bool] = []

    async def loop() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append(cancel_requested())  # still asked to stop, whatever came out of the await
            raise

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    await cancel_all([task])
    assert seen == [True]
