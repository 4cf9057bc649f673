"""Request deadlines kept by one sweeping timer per process, not one timer per request.

``asyncio.timeout`` arms and disarms a loop timer for every request: about 5 us a request, and
4% of an api process's samples on the create path (py-spy, 2026-12-05). A deadline of seconds
does not need a timer's precision: every in-flight request is shelved with its expiry, and one
sweep every ``resolution`` seconds (only while requests are in flight) cancels the tasks past
theirs. A request pays for a dictionary insert and a delete; an expiry comes at most
``resolution`` late.

The semantics are ``asyncio.timeout``'s: an expired deadline cancels the task, and
``Deadlines.end`` takes that cancellation back and says whether the ``CancelledError`` the task
saw was the deadline's (and not, say, a shutdown's as well).
"""

from __future__ import annotations

import asyncio


class Deadline:
    """One request's deadline: its task, when it expires, and whether it did."""

    __slots__ = ("at", "cancelling", "expired", "shelf", "task")

    def __init__(self, task: asyncio.Task[object], at: float, shelf: dict[Deadline, None]) -> None:
        self.task = task
        self.at = at
        self.cancelling = task.cancelling()  # cancellations already asked of the task before
        self.expired = False
        self.shelf = shelf


class Deadlines:
    """The deadlines of the requests in flight in one event loop."""

    def __init__(self, resolution: float = 0.05) -> None:
        self.resolution = resolution
        # One shelf per budget: a shelf's deadlines expire in the order they were added, so a
        # sweep looks only at the head of each (a dict keeps insertion order).
        self._shelves: dict[float, dict[Deadline, None]] = {}
        self._sweeping: asyncio.TimerHandle | None = None

    def start(self, budget: float) -> Deadline:
        """A deadline ``budget`` seconds from now for the current task."""
        task = asyncio.current_task()
        assert task is not None, "a deadline belongs to a task"
        loop = task.get_loop()
        shelf = self._shelves.get(budget)
        if shelf is None:
            shelf = self._shelves[budget] = {}
        deadline = Deadline(task, loop.time() + budget, shelf)
        shelf[deadline] = None
        if self._sweeping is None:
            self._sweeping = loop.call_later(self.resolution, self._sweep, loop)
        return deadline

    def lift(self, deadline: Deadline) -> None:
        """No deadline any more for this request (a live stream, once open); it must not have expired."""
        deadline.shelf.pop(deadline, None)

    def end(self, deadline: Deadline) -> bool:
        """The request is over: forget its deadline; True if the deadline cancelled the task.

        An expired deadline's cancellation is taken back (``Task.uncancel``); True only when no
        other cancellation is pending, so a shutdown's still propagates.
        """
        deadline.shelf.pop(deadline, None)
        if not deadline.expired:
            return False
        return deadline.task.uncancel() <= deadline.cancelling

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        in_flight = False
        for shelf in self._shelves.values():
            while shelf:
                deadline = next(iter(shelf))
                if deadline.at > now:
                    in_flight = True
                    break
                del shelf[deadline]
                deadline.expired = True
                deadline.task.cancel()
        self._sweeping = loop.call_later(self.resolution, self._sweep, loop) if in_flight else None
