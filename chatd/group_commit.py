"""Group commit: items that arrive together share one commit, as a database's log flush is shared.

An item joins the pending list and waits on a future; a commit takes the whole list (up to
``max_group``) and settles every future. At most ``max_in_flight`` commits run at once: under
light load an item is committed on the next loop iteration, alone; under heavy load items pile
up while commits are in flight, so groups grow with the load and the cost per item shrinks.

The pending list is bounded: past ``max_pending`` items a new one is refused at once (shed)
instead of queueing behind work that cannot finish in time, so an overload costs neither
memory nor the latency of the items already waiting. An item whose caller stopped waiting
(its future cancelled, say by a request deadline) before its commit started is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Shed(Exception):
    """The pending list is full: the item was refused without waiting."""


@dataclass
class Waiting(Generic[T, R]):
    """One item in a group, and the future its caller awaits."""

    item: T
    done: asyncio.Future[R] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def resolve(self, result: R) -> None:
        if not self.done.done():
            self.done.set_result(result)

    def fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


Commit = Callable[[list[Waiting[T, R]]], Awaitable[None]]


class GroupCommit(Generic[T, R]):
    """Commits items in groups with ``commit(group)``, which settles each item's future.

    If ``commit`` raises, every item it left unsettled fails with that error; if it returns
    without settling one, that item fails with a RuntimeError (a bug, never a hang).
    """

    def __init__(self, commit: Commit[T, R], *, max_group: int = 512, max_in_flight: int = 2, max_pending: int = 4096):
        self.commit = commit
        self.max_group = max_group
        self.max_in_flight = max_in_flight
        self.max_pending = max_pending
        self._pending: list[Waiting[T, R]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._scheduled = False

    @property
    def pending(self) -> int:
        """Items waiting for a commit to start."""
        return len(self._pending)

    async def submit(self, item: T) -> R:
        """Commit ``item`` with whatever arrives with it; its result, or the group's error."""
        if len(self._pending) >= self.max_pending:
            raise Shed(f"{len(self._pending)} items are already waiting")
        waiting: Waiting[T, R] = Waiting(item)
        self._pending.append(waiting)
        self._schedule()
        return await waiting.done

    async def drain(self) -> None:
        """Wait until nothing is pending or in flight (at shutdown, after the last submit)."""
        while self._in_flight or self._pending:
            if self._in_flight:
                await asyncio.gather(*self._in_flight, return_exceptions=True)
            else:
                self._start()

    def _schedule(self) -> None:
        # Start on the next loop iteration, so that every item submitted in this one joins.
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        while self._pending and len(self._in_flight) < self.max_in_flight:
            taken, self._pending = self._pending[: self.max_group], self._pending[self.max_group :]
            group = [waiting for waiting in taken if not waiting.done.done()]
            if not group:
                continue
            task = asyncio.create_task(self._run(group))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if self._pending:
            self._schedule()

    async def _run(self, group: list[Waiting[T, R]]) -> None:
        try:
            await self.commit(group)
        except BaseException as exc:
            for waiting in group:
                waiting.fail(exc)
            if not isinstance(exc, Exception):
                raise
        for waiting in group:
            waiting.fail(RuntimeError("the group's commit left this item unsettled"))
