"""Many jobs in one AMQP message (an "envelope"), and what becomes of each of them.

RabbitMQ's cost is per message: publishing a persistent message to a quorum queue with a
confirm costs its server 0.11-0.15 ms of CPU, delivering and acking it 0.1 ms more, whatever
the message carries (RabbitMQ 3.10, 150-byte jobs). One message per job made the broker the
limit of the write path; a batch of 64 jobs as one message costs it 20-30 times less per job
and the Python side as much (``bench/amqp_batching.py`` measures both ways).

On the wire: a message with the ``x-chatd-jobs`` header carries that many jobs, each framed as
a 4-byte big-endian length and its bytes, so a job may be any bytes at all. A message without
the header is one job: what a single job is published as, and what was queued before
envelopes existed. A message whose framing does not add up is handed out whole, as one job,
so that a consumer dead-letters it as undecodable instead of it vanishing.

The broker settles a message, not a job, so an ``Envelope`` records each job's fate and the
adapter settles the message once every job of it is decided.
"""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import ChannelInvalidStateError

JOBS_HEADER = "x-chatd-jobs"
ATTEMPTS_HEADER = "x-chatd-attempts"
# Bounds on an envelope. Past them a batch travels as several: a broker holds a message in one
# piece, and a consumer that dies with an envelope in hand sends all its jobs round again.
MAX_JOBS = 256
MAX_BYTES = 1 << 20
PERSISTENT = aio_pika.DeliveryMode.PERSISTENT
_LENGTH = struct.Struct(">I")

# ack: done. retry: again after a delay. dead: to the dead-letter queue. back: not handed out
# (a consumer stopping), to be delivered again as if never delivered. later: handed out, but a
# backend outage stopped the work; again after a delay, this delivery not counted as an attempt.
Fate = Literal["ack", "retry", "dead", "back", "later"]


def groups(bodies: Sequence[bytes]) -> Iterator[list[bytes]]:
    """The bodies in order, cut into envelopes within the bounds (an oversized job alone)."""
    group: list[bytes] = []
    size = 0
    for body in bodies:
        framed = _LENGTH.size + len(body)
        if group and (len(group) >= MAX_JOBS or size + framed > MAX_BYTES):
            yield group
            group, size = [], 0
        group.append(body)
        size += framed
    if group:
        yield group


def frame(bodies: Sequence[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(body)) + body for body in bodies)


def unframe(data: bytes, count: int) -> list[bytes] | None:
    """The ``count`` jobs framed in ``data``, or None if the framing does not add up."""
    bodies: list[bytes] = []
    at = 0
    while at < len(data) and len(bodies) < count:
        if at + _LENGTH.size > len(data):
            return None
        (size,) = _LENGTH.unpack_from(data, at)
        at += _LENGTH.size
        if at + size > len(data):
            return None
        bodies.append(data[at : at + size])
        at += size
    return bodies if at == len(data) and len(bodies) == count and count > 0 else None


def message(bodies: Sequence[bytes], attempts: int = 0, queued_at: float | None = None) -> aio_pika.Message:
    """A persistent message carrying ``bodies``: plain for one job, an envelope for more.

    ``attempts``: deliveries the jobs had before this copy, which the consumer adds to its own.
    ``queued_at``: when the jobs were first published (a copy keeps its original's), carried in
    the AMQP ``timestamp`` property (whole seconds) for the age of the oldest job in /metrics.
    """
    headers: dict[str, Any] = {ATTEMPTS_HEADER: attempts} if attempts > 0 else {}
    timestamp = int(time.time() if queued_at is None else queued_at)
    if len(bodies) == 1:
        return aio_pika.Message(bodies[0], delivery_mode=PERSISTENT, headers=headers, timestamp=timestamp)
    return aio_pika.Message(
        frame(bodies), delivery_mode=PERSISTENT, headers={**headers, JOBS_HEADER: len(bodies)}, timestamp=timestamp
    )


def _count(value: Any) -> int:
    try:
        return max(int(value.decode() if isinstance(value, bytes) else value), 0)
    except (TypeError, ValueError):
        return 0


def returns_of(message: AbstractIncomingMessage) -> int:
    """How often the broker took this message back from a consumer (a crash, a nack).

    A quorum queue counts them in ``x-delivery-count`` (RabbitMQ 3.10 counts a nack too); a
    classic queue only says whether there was one.
    """
    returned = (message.headers or {}).get("x-delivery-count")
    return _count(returned) if returned is not None else int(bool(message.redelivered))


def attempts_of(message: AbstractIncomingMessage) -> int:
    """Deliveries of this message's jobs so far, this one included.

    A copy (a retry, an envelope given back or split) carries its predecessors' attempts in
    ``ATTEMPTS_HEADER``; the broker's count of returns applies to this copy only.
    """
    return _count((message.headers or {}).get(ATTEMPTS_HEADER, 0)) + returns_of(message) + 1


class Envelope:
    """One broker message: its jobs, how many were handed out, and the fate of each."""

    def __init__(self, message: AbstractIncomingMessage):
        self.message = message
        self.attempts = attempts_of(message)
        # When its jobs were first published; None for a message from before timestamps.
        self.queued_at = message.timestamp.timestamp() if message.timestamp is not None else None
        self.returned = returns_of(message) > 0
        count = (message.headers or {}).get(JOBS_HEADER)
        bodies = unframe(message.body, _count(count)) if count is not None else None
        self.framed = bodies is not None
        self.bodies = bodies if bodies is not None else [message.body]
        self.handed = 0
        self.keep_whole = False  # set when splitting it failed
        self.fates: list[Fate | None] = [None] * len(self.bodies)
        self.undecided = len(self.bodies)

    @property
    def live(self) -> bool:
        """False once the message's channel is gone: only that channel could settle it."""
        try:
            return not self.message.channel.is_closed
        except ChannelInvalidStateError:
            return False

    @property
    def remaining(self) -> int:
        """Jobs not handed out yet."""
        return len(self.bodies) - self.handed

    @property
    def must_split(self) -> bool:
        """The broker took it back from a consumer, maybe one that a job of it killed, and no
        job of it has been handed out here: it travels on as single jobs, so that the broker's
        delivery limit (which counts a message's returns) isolates a killer from its mates."""
        return self.framed and len(self.bodies) > 1 and self.returned and self.handed == 0 and not self.keep_whole

    def hand_out(self, limit: int) -> list[Job]:
        jobs = [Job(self, index) for index in range(self.handed, min(self.handed + limit, len(self.bodies)))]
        self.handed += len(jobs)
        return jobs

    def decide(self, index: int, fate: Fate) -> bool:
        """Record a job's fate; True once every job of the envelope has one."""
        if self.fates[index] is not None:
            raise ValueError(f"job {index} of a message was already settled ({self.fates[index]})")
        self.fates[index] = fate
        self.undecided -= 1
        return self.undecided == 0

    def give_back(self) -> bool:
        """Decide every job not handed out as ``back``; True once every job has a fate."""
        for index in range(self.handed, len(self.bodies)):
            self.decide(index, "back")
        self.handed = len(self.bodies)
        return self.undecided == 0

    def fated(self, fate: Fate) -> list[bytes]:
        return [body for body, its in zip(self.bodies, self.fates) if its == fate]


@dataclass(frozen=True, eq=False)
class Job:
    """A Delivery's tag: which job of which envelope."""

    envelope: Envelope
    index: int

    @property
    def body(self) -> bytes:
        return self.envelope.bodies[self.index]


class JobsPerMessage:
    """The mean jobs per message among the last ones this process put on a queue or took off it.

    The broker counts messages, not jobs: this turns its count into jobs, exactly while the
    messages waiting are like the recent ones, as an estimate otherwise. Until it saw one, a
    message counts as one job (a lower bound).
    """

    WINDOW = 64

    def __init__(self) -> None:
        self._recent: deque[int] = deque(maxlen=self.WINDOW)
        self._total = 0

    def saw(self, jobs: int) -> None:
        if len(self._recent) == self.WINDOW:
            self._total -= self._recent[0]
        self._recent.append(jobs)
        self._total += jobs

    def jobs(self, messages: int) -> int:
        if not self._recent:
            return messages
        return max(messages, round(messages * self._total / len(self._recent)))
