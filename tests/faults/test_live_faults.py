"""Live events under faults: every client that resumes from its last id ends with every message once, in order.

The cluster and the load of test_faults.py (two api and two worker processes, the real servers),
plus clients following the load's chats over SSE, spread over both api processes. A client whose
stream ends (its api killed, the server shutting it) reconnects to an api process with
``Last-Event-ID``, as a browser does. After the fault is healed and every acked number is stored,
each client must have received every acked message of its chat, each connection's in number order
apart from late ones (a worker stopped past the hole wait stores its messages after later numbers:
they come marked ``"late": true``), and a number twice only across a resume.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Namespace
from tests.factories import eventually
from tests.faults.test_faults import (
    Cluster,
    converged,
    failed_requests,
    kill_api,
    restart_rabbitmq,
    start_load,
    through_fault,
    wipe_redis,
)
from tests.faults.verify import Verdict

pytestmark = [pytest.mark.faults, pytest.mark.real, pytest.mark.timeout(600)]

# A short keep-alive: the feeds also read the store at that interval, which is what delivers an
# announcement lost in the fault when nothing follows it.
LIVE = {"live_keepalive_seconds": 2.0, "live_hole_wait_seconds": 5.0}


class LiveCluster(Cluster):
    def __init__(self, namespace: Namespace, tmp_path: Path):
        super().__init__(namespace, tmp_path, **LIVE)


class Follower:
    """A client following one chat, resuming from its last event id on whichever api process answers."""

    def __init__(self, urls: Callable[[], list[str]], token: str, chat: int, index: int):
        self.urls = urls
        self.token = token
        self.chat = chat
        self.index = index
        self.numbers: list[int] = []
        # Per connection, the numbers given in order (not late): each must rise.
        self.in_order: list[list[int]] = []
        self.late: list[int] = []
        self.last_id = ""
        self.connections = 0

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                urls = self.urls()
                url = urls[(self.index + self.connections) % len(urls)]
                self.connections += 1
                # As a browser does: the last event id it was sent.
                headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
                path = f"{url}/applications/{self.token}/chats/{self.chat}/events?after=0"
                try:
                    async with session.get(path, headers=headers) as response:
                        if response.status == 200:
                            await self._read(response)
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.2)  # as a browser's EventSource retry

    async def _read(self, response: aiohttp.ClientResponse) -> None:
        event = ""
        self.in_order.append([])
        async for line in response.content:
            if line.startswith(b"event: "):
                event = line[7:].strip().decode()
            elif line.startswith(b"id: "):
                self.last_id = line[4:].strip().decode()
            elif line.startswith(b"data: ") and event == "message.created":
                data = json.loads(line[6:])
                self.numbers.append(int(data["number"]))
                (self.late if data.get("late") else self.in_order[-1]).append(int(data["number"]))

    def in_order_once(self) -> bool:
        """Each connection gave its numbers once, rising, apart from late ones; nothing given twice
        unless a resume came while a late number was awaited (its ids stay below it)."""
        rising = all(numbers == sorted(set(numbers)) for numbers in self.in_order)
        return rising and (len(self.numbers) == len(set(self.numbers)) or self.connections > 1)


async def stop_worker_past_the_hole_wait(cluster: Cluster) -> None:
    """SIGSTOP a worker for twice the hole wait, then SIGCONT: the jobs it holds are stored late."""
    worker = cluster.first("worker")
    assert worker.process is not None
    worker.process.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(2 * LIVE["live_hole_wait_seconds"])  # the outage itself
    finally:
        worker.process.send_signal(signal.SIGCONT)


LIVE_FAULTS: dict[str, Callable[[Cluster], Awaitable[None]]] = {
    "worker stopped past the hole wait": stop_worker_past_the_hole_wait,
    "kill -9 api": kill_api,
    "restart rabbitmq": restart_rabbitmq,
    "restart redis, data wiped": wipe_redis,
}


@pytest.mark.parametrize("fault", list(LIVE_FAULTS))
async def test_live_fault(fault: str, tmp_path: Path, record_fault) -> None:  # type: ignore[no-untyped-def]
    namespace = Namespace("real", tmp_path)
    cluster = LiveCluster(namespace, tmp_path)
    verdict: Verdict | None = None
    retried = 0
    followers: list[Follower] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        await cluster.start()
        load = await start_load(cluster)
        token = load.token  # type: ignore[attr-defined]
        chats = list(load.chats)
        followers = [Follower(lambda: cluster.api_urls, token, chat, i) for chat in chats for i in range(4)]
        tasks = [asyncio.create_task(follower.run()) for follower in followers]
        result = await through_fault(cluster, load, LIVE_FAULTS[fault])
        retried = failed_requests(result)
        verdict = await converged(namespace.name, cluster, token, result)
        assert verdict.ok, f"{verdict} ({result.statuses})"
        acked = {chat: {n for (c, n) in result.acked_messages if c == chat} for chat in chats}

        async def everyone_has_everything() -> bool:
            return all(acked[f.chat] <= set(f.numbers) for f in followers)

        await eventually(everyone_has_everything, timeout=120)
        for follower in followers:
            assert follower.in_order_once(), f"chat {follower.chat}: repeated or out of order"
        if fault == "worker stopped past the hole wait":
            # Every message reached every follower once, on its first connection: late ones marked.
            assert all(f.connections == 1 and len(f.numbers) == len(set(f.numbers)) for f in followers)
        assert sum(len(a) for a in acked.values()) > 100, f"the load hardly ran: {result.statuses}"
        if fault == "kill -9 api":
            assert any(f.connections > 1 for f in followers), "no client had to resume"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        live_ok = bool(verdict and verdict.ok) and all(f.in_order_once() for f in followers)
        record_fault(f"live events, {fault}", live_ok, verdict or Verdict.none(), retried)
        cluster.stop()
        await namespace.cleanup()
