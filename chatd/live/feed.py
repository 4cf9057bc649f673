"""One chat's (or one application's) live feed in one api process.

Announcements and store reads meet in one cache keyed by number, and each subscriber walks
the numbers from its own ``last``: a number is given once it is known to be stored, in
order. So a replay from the store and the live announcements cannot overlap or leave a gap
between them: both fill the same numbered slots, and a subscriber takes each slot once.

A number that is missing while a later one is stored is a *hole*: usually a message some
other worker is storing right now, sometimes a number that will never be stored (its request
failed after it was taken). The feed waits until ``hole_wait`` seconds after it learned of the
stored number above the hole, re-reading the store, then skips it; so holes in a row share one
wait rather than adding up. A hole whose next stored message was accepted more than
``settled_age`` seconds ago is skipped at once (it was not filled in all that time).

A skipped hole is not given up: until the message above it is ``settled_age`` old, a record
stored in it (a worker that was stopped, a job redelivered after its lease) is sent *late* to
every subscriber that passed it, marked ``"late": true``. While a subscriber awaits such a
number its event ids stay just below it (``Subscriber.resume_id``), so a client that resumes
from its last id is replayed the late record too, at the price of repeating those above it.
Late records are found by their announcement, or by a store read at every ``poll``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from chatd.live.cancelling import cancel_requested
from chatd.live.events import MESSAGE_UPDATED, LiveEvent
from chatd.live.subscriber import SLOW_CONSUMER, Subscriber

logger = logging.getLogger(__name__)

ReadAfter = Callable[[int, int], Awaitable[list[LiveEvent]]]

# A settled hole: the number is skipped.
SKIPPED = None
# After a failed store read, the feed tries again this much later.
_RETRY_SECONDS = 1.0


class Feed:
    """Delivers one feed's events, in number order, to this process's subscribers of it."""

    def __init__(
        self,
        read_after: ReadAfter,
        *,
        hole_wait: float = 10.0,
        settled_age: float = 300.0,
        page_size: int = 500,
        recheck: float = 0.25,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self.read_after = read_after
        self.hole_wait = hole_wait
        self.settled_age = settled_age
        self.page_size = page_size
        self.recheck = recheck
        self.monotonic = monotonic
        self.wall = wall
        self.subscribers: set[Subscriber] = set()
        self.cache: dict[int, LiveEvent | None] = {}
        # Number -> when this feed first knew it stored (monotonic): a hole below it dates from then.
        self.learned: dict[int, float] = {}
        self.max_known = 0
        self.floor = 0
        # First number of a hole -> (first seen, last read), monotonic seconds.
        self.holes: dict[int, tuple[float, float]] = {}
        # Skipped holes that may still be stored -> when the message above was accepted (wall
        # clock): awaited late until that is ``settled_age`` ago.
        self.skipped: dict[int, float] = {}
        self._read_skipped = False
        self._needs_read: set[Subscriber] = set()
        # Who the next pump looks at: everyone after new events, else only those that changed
        # (a join or a drained buffer), so that joining a busy chat costs O(1), not O(subscribers).
        self._everyone = False
        self._dirty: set[Subscriber] = set()
        self._evict_above = 64
        self._wake = asyncio.Event()
        self._next_check: float | None = None

    # -- called by the hub and the connections -------------------------------------------

    def add(self, subscriber: Subscriber) -> None:
        """Start delivering to ``subscriber`` from its ``last``: first from the store, then live."""
        self.subscribers.add(subscriber)
        self._needs_read.add(subscriber)
        self._dirty.add(subscriber)
        self._wake.set()

    def remove(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        self._needs_read.discard(subscriber)
        self._dirty.discard(subscriber)

    def offer(self, events: Iterable[LiveEvent]) -> None:
        """Take announced events (any order, duplicates allowed)."""
        for event in events:
            if event.kind == MESSAGE_UPDATED:
                self._update(event)
            elif event.number in self.skipped:
                self._late(event)
            elif event.number > self.floor and self.cache.get(event.number) is None:
                self._cache(event)
        self._everyone = True
        self._wake.set()

    def poll(self) -> None:
        """Read the store for every subscriber once: repairs announcements that were lost."""
        self._needs_read.update(self.subscribers)
        self._read_skipped = bool(self.skipped)
        self._everyone = True
        self._wake.set()

    def tick(self) -> None:
        """What the feed's timer does: look at every subscriber again (a hole it waits on may be due)."""
        self._everyone = True
        self._wake.set()

    def has_room(self, subscriber: Subscriber) -> None:
        """A connection drained its buffer: give it more if it is behind."""
        if subscriber.last < self.max_known or subscriber in self._needs_read:
            self._dirty.add(subscriber)
            self._wake.set()

    # -- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until cancelled (the hub cancels it when the last subscriber leaves)."""
        while True:
            delay = None if self._next_check is None else max(0.0, self._next_check - self.monotonic())
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                if cancel_requested():  # the hub stopped it just as the timer fired (cancelling.py)
                    raise asyncio.CancelledError from None
                self.tick()
            self._wake.clear()
            self._next_check = None
            try:
                await self.pump()
            except Exception:
                if cancel_requested():
                    raise asyncio.CancelledError from None
                # The store is down or failing: subscribers keep their place; try again soon.
                logger.warning("live feed could not read the store; retrying", exc_info=True)
                self._needs_read.update(self.subscribers)
                self._everyone = True
                self._schedule(_RETRY_SECONDS)

    async def pump(self) -> None:
        """Give every subscriber what is known, reading the store where it is behind."""
        if self._read_skipped:
            self._read_skipped = False
            await self._read_late()
        read: set[int] = set()
        everyone, dirty = self._everyone, self._dirty
        self._everyone, self._dirty = False, set()
        candidates = list(self.subscribers) if everyone else [s for s in dirty if s in self.subscribers]
        while True:
            groups: dict[int, list[Subscriber]] = {}
            for subscriber in candidates:
                self._advance(subscriber)
                if subscriber.closed is not None or subscriber.room == 0:
                    continue
                if subscriber in self._needs_read or self.max_known > subscriber.last:
                    if subscriber.last not in read and self._may_read(subscriber.last):
                        groups.setdefault(subscriber.last, []).append(subscriber)
            if not groups:
                break
            widen = False
            for last, members in groups.items():
                read.add(last)
                known = self.max_known
                items = await self.read_after(last, self.page_size)
                self._learn(items)
                widen = widen or self.max_known > known
                for subscriber in members:
                    if len(items) < self.page_size:
                        self._needs_read.discard(subscriber)
                    else:
                        self._needs_read.add(subscriber)  # more to replay once it has room
                widen = self._settle_hole_after(last) or widen
            if widen:  # the store had news (a lost announcement, a skipped hole): for everyone
                candidates = list(self.subscribers)
        self._evict()

    # -- internals ------------------------------------------------------------------------

    def _advance(self, subscriber: Subscriber) -> None:
        while subscriber.closed is None:
            following = subscriber.last + 1
            if following not in self.cache:
                if subscriber.last >= self.max_known and subscriber not in self._needs_read:
                    subscriber.catching_up = False
                return
            event = self.cache[following]
            if event is SKIPPED:
                if following in self.skipped:
                    subscriber.pending.add(following)
                subscriber.last = following
                continue
            if subscriber.room == 0:
                # A full buffer close to the newest message is a burst: wait for the connection
                # to drain it. More than a buffer's worth behind while live: too slow.
                if not subscriber.catching_up and self.max_known - subscriber.last > subscriber.capacity:
                    subscriber.close(SLOW_CONSUMER)
                return
            subscriber.give(event if not subscriber.pending else event.resumed_at(subscriber.resume_id))
            subscriber.last = following

    def _update(self, event: LiveEvent) -> None:
        cached = self.cache.get(event.number)
        if cached is not None:
            if (cached.revision or 1) <= (event.revision or 1):
                self.cache[event.number] = cached.with_update(event)
        elif event.number > self.floor and event.number not in self.cache:
            # An edit can only follow the store: the message exists, whether or not its
            # announcement has come yet. Those who have not been given it get the new text.
            self._cache(event.with_update(event))
        for subscriber in self.subscribers:
            if subscriber.last >= event.number:
                subscriber.give_update(event)

    def _learn(self, items: list[LiveEvent]) -> None:
        # No floor here: a subscriber that joined behind everyone else asked for these.
        for event in items:
            if event.number in self.skipped:
                self._late(event)
            elif self.cache.get(event.number) is None:
                self._cache(event)

    def _cache(self, event: LiveEvent) -> None:
        self.cache[event.number] = event
        self.learned.setdefault(event.number, self.monotonic())
        self.max_known = max(self.max_known, event.number)

    def _may_read(self, last: int) -> bool:
        seen = self.holes.get(last + 1)
        if seen is None:
            return True
        if self.monotonic() - seen[1] >= self.recheck:
            return True
        self._schedule(seen[1] + self.recheck - self.monotonic())
        return False

    def _settle_hole_after(self, last: int) -> bool:
        """After reading from ``last``: if ``last + 1`` is missing below a stored number, wait or skip.

        True if it skipped the hole.
        """
        if last + 1 in self.cache:
            self.holes.pop(last + 1, None)
            return False
        above = [number for number, event in self.cache.items() if number > last and event is not SKIPPED]
        if not above:
            return False
        following = min(above)
        now = self.monotonic()
        first_seen = min(self.holes.get(last + 1, (now, now))[0], self.learned.get(following, now))
        accepted_at = self.cache[following].at  # type: ignore[union-attr]
        settled = self.wall() - accepted_at >= self.settled_age
        if now - first_seen >= self.hole_wait or settled:
            logger.info("live feed skips numbers %d to %d: not stored", last + 1, following - 1)
            for number in range(last + 1, following):
                self.cache[number] = SKIPPED
                if not settled:
                    self.skipped[number] = accepted_at
            self.holes.pop(last + 1, None)
            return True
        self.holes[last + 1] = (first_seen, now)
        self._schedule(self.recheck)
        return False

    def _late(self, event: LiveEvent) -> None:
        """A skipped number was stored after all: to those who passed it late, in order to the rest."""
        del self.skipped[event.number]
        if event.number in self.cache:
            self.cache[event.number] = event
        late = event.as_late()
        for subscriber in self.subscribers:
            if event.number in subscriber.pending:
                subscriber.give_late(late)

    async def _read_late(self) -> None:
        """Look for skipped numbers in the store (their announcements may be lost); forget settled ones."""
        wall = self.wall()
        settled = [number for number, at in self.skipped.items() if wall - at >= self.settled_age]
        for number in settled:
            del self.skipped[number]
        if settled:
            gone = set(settled)
            for subscriber in self.subscribers:
                subscriber.pending -= gone
        if not self.skipped:
            return
        lowest, highest = min(self.skipped), max(self.skipped)
        items = await self.read_after(lowest - 1, min(self.page_size, highest - lowest + 1))
        for event in items:
            if event.number in self.skipped:
                self._late(event)

    def _schedule(self, delay: float) -> None:
        at = self.monotonic() + max(0.0, delay)
        if self._next_check is None or at < self._next_check:
            self._next_check = at

    def _evict(self) -> None:
        """Forget what every subscriber has passed, and cap what slow ones may still need."""
        if len(self.cache) < self._evict_above:
            return  # amortized: the floor costs a pass over every subscriber
        self.floor = min((s.last for s in self.subscribers), default=self.max_known)
        self.cache = {number: event for number, event in self.cache.items() if number > self.floor}
        self.holes = {number: seen for number, seen in self.holes.items() if number > self.floor}
        cap = 4 * self.page_size
        if len(self.cache) > cap:
            # A subscriber this far behind reads the store again; the newest stay for the rest.
            keep = sorted(self.cache)[-cap:]
            self.cache = {number: self.cache[number] for number in keep}
        self.learned = {number: at for number, at in self.learned.items() if number in self.cache}
        self._evict_above = max(64, 2 * len(self.cache))
