"""The write deadline's timer, driven step by step on a fake clock (no sockets, no sleeping)."""

from __future__ import annotations

from collections.abc import Callable

from chatd.live.write_deadline import WriteDeadline


class Timer:
    def __init__(self) -> None:
        self.off = False

    def cancel(self) -> None:
        self.off = True

    def cancelled(self) -> bool:
        return self.off


class FakeLoop:
    """Just what WriteDeadline uses of a loop: a clock and timers that fire when the test advances it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Callable[[], None], Timer]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer()
        self.timers.append((when, callback, timer))
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(self.now + delay, callback)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while due := sorted((t for t in self.timers if t[0] <= end and not t[2].cancelled()), key=lambda t: t[0]):
            when, callback, _timer = due[0]
            self.timers.remove(due[0])
            self.now = max(self.now, when)
            callback()
        self.now = end


def deadline(loop: FakeLoop, unsent: list[int]) -> tuple[WriteDeadline, list[float]]:
    aborted: list[float] = []
    watch = WriteDeadline(10.0, lambda: aborted.append(loop.now), lambda: unsent[0], loop=loop)  # type: ignore[arg-type]
    return watch, aborted


def test_a_write_not_taken_within_the_deadline_ends_the_connection_at_its_deadline() -> None:
    loop = FakeLoop()
    watch, aborted = deadline(loop, [0])
    loop.advance(7.0)
    watch.writing()  # begins at 7 and never returns
    loop.advance(12.0)
    assert aborted == [17.0] and watch.expired


def test_writes_that_return_never_end_it() -> None:
    loop = FakeLoop()
    watch, aborted = deadline(loop, [0])
    for _ in range(100):
        watch.writing()
        loop.advance(9.0)  # slow, but each within the deadline
        watch.written()
        loop.advance(5.0)
    assert aborted == []


def test_bytes_left_unsent_at_the_end_get_one_deadline() -> None:
    loop = FakeLoop()
    unsent = [4096]
    watch, aborted = deadline(loop, unsent)
    loop.advance(3.0)
    watch.finish()
    loop.advance(9.9)
    assert aborted == []
    loop.advance(0.2)
    assert aborted == [13.0]
    # Taken in time: nothing to end, and the timer stops.
    calm = FakeLoop()
    watch, aborted = deadline(calm, [100])
    watch.finish()
    calm.timers = [t for t in calm.timers if not t[2].cancelled()]
    assert len(calm.timers) == 1
    calm.advance(5.0)
    watch.unsent = lambda: 0
    calm.advance(10.0)
    assert aborted == [] and not [t for t in calm.timers if not t[2].cancelled()]
