"""Which fan-out a configuration gets, and the in-process one (an in-memory store is one process)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from chatd.live.events import decode_announcement
from chatd.live.fanout import Deliver, LocalFanout, QueuedFanout, Resync
from chatd.live.fanouts import make_fanout, socket_directory
from chatd.live.redis_fanout import RedisFanout
from chatd.live.unix_fanout import UnixFanout
from chatd.settings import Settings
from tests.live.test_feed import FakeStore


def test_the_configuration_picks_the_fan_out(tmp_path: Path) -> None:
    assert isinstance(make_fanout(Settings(redis_url="redis://127.0.0.1:6379/0", redis_prefix="x:")), RedisFanout)
    short = tempfile.mkdtemp(prefix="chatd-")  # pytest's tmp_path can be too deep for a socket path
    embedded = make_fanout(Settings(database_url=f"sqlite:///{short}/chatd.db"))
    assert isinstance(embedded, UnixFanout) and embedded.directory == f"{short}/chatd.live"
    os.rmdir(short)
    assert isinstance(make_fanout(Settings(database_url="sqlite:///:memory:")), LocalFanout)


def test_a_socket_directory_too_deep_for_a_socket_path_stays_beside_the_store(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 80) / "chatd.db"
    assert socket_directory(str(deep)) == f"{tmp_path}/{'d' * 80}/chatd.live"  # never a shared /tmp name


async def test_local_fan_out_delivers_in_process() -> None:
    fanout = LocalFanout()
    received: asyncio.Queue[bytes] = asyncio.Queue()
    resynced = asyncio.Event()
    await fanout.open()
    listener = asyncio.create_task(fanout.listen(received.put_nowait, resynced.set))
    try:
        await resynced.wait()
        fanout.announce([FakeStore.event(1), FakeStore.event(2)])
        body = await asyncio.wait_for(received.get(), 10)
        assert [e.number for e in decode_announcement(body)] == [1, 2]
    finally:
        listener.cancel()
        await fanout.close()


class BrokenFanout(QueuedFanout):
    """A fan-out whose server hangs on the first send and refuses the next."""

    def __init__(self) -> None:
        super().__init__(max_queued=2, send_timeout=0.05)
        self.attempts = 0

    async def _send(self, body: bytes) -> None:
        self.attempts += 1
        if self.attempts == 1:
            await asyncio.Event().wait()
        raise ConnectionRefusedError("fan-out down")

    async def listen(self, deliver: Deliver, resync: Resync) -> None:
        raise NotImplementedError


async def test_a_broken_fan_out_never_holds_up_the_announcer() -> None:
    fanout = BrokenFanout()
    await fanout.open()
    try:
        for number in range(1, 6):
            fanout.announce([FakeStore.event(number)])  # returns at once, never raises
        # Bounded: past max_queued the oldest go; a hung send times out; a refused one is dropped.
        await asyncio.wait_for(fanout._idle.wait(), 10)
        assert fanout.sent == 0 and fanout.dropped == 5
    finally:
        await fanout.close()
