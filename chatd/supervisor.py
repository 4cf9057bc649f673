"""Named background loops: restarted when they crash, drained when the process stops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from chatd import metrics

logger = logging.getLogger(__name__)

LoopBody = Callable[[asyncio.Event], Awaitable[None]]


class Supervisor:
    """Runs each loop as a task; a crash is logged and the loop restarted with capped back-off.

    A loop receives the ``stopping`` event: once it is set, the loop finishes the work in
    hand and returns. ``stop`` waits ``shutdown_timeout`` seconds for that, then cancels.
    """

    def __init__(self, shutdown_timeout: float = 20.0, max_backoff: float = 30.0):
        self.shutdown_timeout = shutdown_timeout
        self.max_backoff = max_backoff
        self.stopping = asyncio.Event()
        self.restarts: dict[str, int] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, body: LoopBody) -> None:
        if name in self._tasks:
            raise ValueError(f"loop {name!r} is already running")
        self.restarts[name] = 0
        self._tasks[name] = asyncio.create_task(self._keep_running(name, body), name=name)

    @property
    def names(self) -> list[str]:
        return list(self._tasks)

    async def _keep_running(self, name: str, body: LoopBody) -> None:
        backoff = 0.1
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            started = loop.time()
            try:
                await body(self.stopping)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                if loop.time() - started >= self.max_backoff:
                    backoff = 0.1  # it ran well for a while: this is a new failure, not the same one again
                self.restarts[name] += 1
                metrics.LOOP_RESTARTS.labels(name).inc()
                logger.exception("background loop %s crashed; restarting in %.1fs", name, backoff)
            try:
                await asyncio.wait_for(self.stopping.wait(), backoff)
            except TimeoutError:
                pass
            backoff = min(backoff * 2, self.max_backoff)

    async def stop(self) -> None:
        self.stopping.set()
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.shutdown_timeout)
        for task in pending:
            logger.warning(
                "background loop %s did not stop in %.0fs; cancelling", task.get_name(), self.shutdown_timeout
            )
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._tasks.clear()


async def sleep_unless_stopping(stopping: asyncio.Event, seconds: float) -> bool:
    """Sleep; return True at once if ``stopping`` is set first."""
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
        return True
    except TimeoutError:
        return False
