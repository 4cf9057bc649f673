"""Numbering a group of creations in one store transaction: new numbers and idempotency keys.

The store is the only place a number is taken from. Each scope (an application's chats, a
chat's messages) has a counter row in the store; a group of creations adds what it needs to
each counter and records the idempotency keys of its requests in the same transaction. So a
number is handed out at most once whatever happens to any other server (Redis emptied,
restarted from an older snapshot, or replaced by a lagging replica holds nothing of it), and a
key's record exists exactly when its number was taken.

``NumberingPlan`` is the part both stores share: given the requests and the records the
transaction found, which requests need new numbers, which replay a recorded number, and
which reuse a key for another request; then, given the counters' new values, every request's
answer and the records to write. It does no I/O, so it is tested on its own.

A scope may have a ceiling (an application's chats: ``CHATD_MAX_CHATS_PER_APPLICATION``). The
counters are added to as usual, and a request whose new number would pass the ceiling is refused
instead (``Taken.limit_reached``); the store then sets those counters back (``overshoot``) in the
same transaction, which still holds their rows. So the ceiling is exact under any concurrency, and
a group below its ceiling pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from chatd.domain import NumberScope


@dataclass(frozen=True)
class NumberRequest:
    """One creation asking for the next number of ``scope``, maybe under an idempotency key."""

    scope: NumberScope
    idempotency_key: str | None = None
    # What the request asks for (kind, chat, a hash of the content): a retry must match it.
    fingerprint: str = ""
    # The highest number the scope may hand out; 0: no ceiling.
    ceiling: int = 0

    @property
    def record_key(self) -> str | None:
        """The key's record in the store: one namespace per application."""
        if self.idempotency_key is None:
            return None
        return f"{self.scope.application_id}:{self.idempotency_key}"


class Taken(NamedTuple):
    """A request's answer: its number, and how it came by it."""

    number: int
    # The number an earlier request with the same key took: nothing new was created.
    replayed: bool = False
    # The key was used before for another request (another body or chat): no number (422).
    key_reused: bool = False
    # The scope's ceiling was reached: no number was taken (403 chat_limit_reached).
    limit_reached: bool = False


class Record(NamedTuple):
    """What the store keeps under an idempotency key."""

    number: int
    fingerprint: str


class NumberingPlan:
    """What one numbering transaction does for a group of requests.

    ``recorded`` holds the live (unexpired) records found for the group's keys. A key seen
    first in this group is recorded with the number its first request takes; a later request
    of the group with that key replays that number.
    """

    def __init__(self, requests: Sequence[NumberRequest], recorded: Mapping[str, Record]):
        self.requests = requests
        self.recorded = recorded
        # scope key -> how many new numbers, in request order
        self.counts: dict[str, int] = {}
        # scope key -> its ceiling (the lowest a request of the group gave), for scopes that have one
        self.ceilings: dict[str, int] = {}
        self._first_of_key: dict[str, int] = {}
        for index, request in enumerate(requests):
            if request.ceiling > 0:
                scope = request.scope.key
                self.ceilings[scope] = min(self.ceilings.get(scope, request.ceiling), request.ceiling)
            key = request.record_key
            if key is not None and (key in recorded or key in self._first_of_key):
                continue
            if key is not None:
                self._first_of_key[key] = index
            self.counts[request.scope.key] = self.counts.get(request.scope.key, 0) + 1

    def finish(self, last_numbers: Mapping[str, int]) -> tuple[list[Taken], dict[str, Record]]:
        """Every request's answer, and the new records, from each counter's value after adding ``counts``."""
        next_number = {scope: last_numbers[scope] - count + 1 for scope, count in self.counts.items()}
        answers: list[Taken] = []
        new_records: dict[str, Record] = {}
        for index, request in enumerate(self.requests):
            key = request.record_key
            if key is None or self._first_of_key.get(key) == index:
                number = next_number[request.scope.key]
                next_number[request.scope.key] = number + 1
                if number > self.ceilings.get(request.scope.key, number):
                    answers.append(Taken(0, limit_reached=True))  # and its key stays unrecorded
                    continue
                answers.append(Taken(number))
                if key is not None:
                    new_records[key] = Record(number, request.fingerprint)
                continue
            record = self.recorded.get(key) or new_records.get(key)
            if record is None:  # the key's first request of this group met the ceiling
                answers.append(Taken(0, limit_reached=True))
            elif record.fingerprint != request.fingerprint:
                answers.append(Taken(0, key_reused=True))
            else:
                answers.append(Taken(record.number, replayed=True))
        return answers, new_records

    def overshoot(self, last_numbers: Mapping[str, int]) -> dict[str, int]:
        """Counters this group pushed past their ceiling, with the value to set each back to.

        Back to the ceiling, or to where the counter stood if it was already past it (a ceiling
        lowered since): the numbers refused are not handed out, so they are not burnt either.
        """
        back: dict[str, int] = {}
        for scope, ceiling in self.ceilings.items():
            last = last_numbers.get(scope)
            if last is not None and last > ceiling:
                back[scope] = max(last - self.counts.get(scope, 0), ceiling)
        return back


# The sequence of application ids, beside the number scopes' keys in ``Store.sequences``.
APPLICATION_IDS = "applications"


class SequenceState(NamedTuple):
    """Where a sequence stands: the last value it handed out, and the highest value stored.

    ``reserved`` is the counter (for application ids, the engine's AUTOINCREMENT); ``stored`` the
    highest number among the rows. A number is taken before its row is stored, so ``stored`` is
    at most ``reserved`` unless rows were loaded around the counters (in bulk, or by hand).
    """

    reserved: int
    stored: int

    @property
    def highest(self) -> int:
        return max(self.reserved, self.stored)


def merge_sequences(found: list[tuple[str, str, int | None]]) -> dict[str, SequenceState]:
    """``(which, key, value)`` rows, ``which`` being "reserved" or "stored", into each key's state."""
    reserved: dict[str, int] = {}
    stored: dict[str, int] = {}
    for which, key, value in found:
        into = reserved if which == "reserved" else stored
        if value is not None and int(value) > into.get(key, 0):
            into[key] = int(value)
    return {key: SequenceState(reserved.get(key, 0), stored.get(key, 0)) for key in sorted({*reserved, *stored})}
