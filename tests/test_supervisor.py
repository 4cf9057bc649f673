"""The supervisor's restart back-off: it grows while a loop keeps crashing, not for ever."""

from __future__ import annotations

import asyncio
import logging

import pytest

from chatd.supervisor import Supervisor


async def test_back_off_starts_again_after_a_loop_ran_well(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = Supervisor(shutdown_timeout=5, max_backoff=0.4)
    runs = 0
    done = asyncio.Event()

    async def body(stopping: asyncio.Event) -> None:
        nonlocal runs
        runs += 1
        if runs == 4:
            await asyncio.sleep(0.5)  # a healthy spell, longer than the longest back-off
        if runs == 5:
            done.set()
            await stopping.wait()
            return
        raise RuntimeError(f"crash {runs}")

    with caplog.at_level(logging.ERROR, logger="chatd.supervisor"):
        supervisor.start("flaky", body)
        await asyncio.wait_for(done.wait(), 10)
        await supervisor.stop()
    waits = [record.getMessage().rsplit(" ", 1)[-1] for record in caplog.records]
    # Three quick crashes double the wait; the crash after the healthy spell starts over.
    assert waits == ["0.1s", "0.2s", "0.4s", "0.1s"]
