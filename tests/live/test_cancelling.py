"""Live loops stop at shutdown even when a cancel is lost on the way (redis-py, asyncio.timeout on 3.11).

A library that answers a cancel as "no message" or as an error leaves the task asked to stop
(``Task.cancelling()``) but running. The next ``asyncio.timeout`` the loop enters then counts that
request as its own: when its timer fires, it raises TimeoutError, not CancelledError. These tests
make both happen to the production loops and check that one cancel stops them.
"""

from __future__ import annotations

import asyncio

from chatd.live.cancelling import cancel_all
from chatd.live.fanout import QueuedFanout
from chatd.live_context import _keep_running


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


class _LosesACancel(QueuedFanout):
    """A fan-out whose first send answers a cancel as "sent"; its second send waits for ever."""

    def __init__(self) -> None:
        super().__init__(send_timeout=0.2)
        self.sending = asyncio.Event()
        self.second_send_interrupted = False

    async def _send(self, body: bytes) -> None:
        if body == b"first":
            self.sending.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                return  # the cancel is lost: the send looks done
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:  # the send's own timer: the loop's timeout turns it into TimeoutError
            self.second_send_interrupted = True
            raise


async def test_the_fanout_sender_stops_on_a_cancel_that_came_out_as_its_send_timeout() -> None:
    fanout = _LosesACancel()
    await fanout.open()
    assert fanout._task is not None
    sender = fanout._task
    try:
        fanout._queued.extend([b"first", b"second"])
        fanout._ready.set()
        await asyncio.wait_for(fanout.sending.wait(), 5)
        sender.cancel()  # once, as a hub stopping: no second cancel to rescue it
        await asyncio.wait([sender], timeout=5)
        assert fanout.second_send_interrupted  # the TimeoutError case happened
        assert sender.cancelled()
        assert (fanout.sent, fanout.dropped) == (1, 0)  # the timeout was not taken for a failed send
    finally:
        await fanout.close()  # cancels again until it stops, if the test failed


async def test_a_kept_loop_stops_on_a_cancel_that_came_out_as_an_error() -> None:
    runs = 0

    async def body() -> None:
        nonlocal runs
        runs += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise ConnectionError("connection closed") from None  # as a driver closing its socket would

    task = _keep_running("test-loop", body)
    try:
        await asyncio.sleep(0)
        task.cancel()  # once: a loop that took the error for a crash would restart the body after 1 s
        await asyncio.wait([task], timeout=3)
        assert task.cancelled() and runs == 1
    finally:
        await cancel_all([task])  # if the test failed: a cancel landing in its restart pause stops it
