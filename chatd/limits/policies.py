"""What a limit is, where it comes from, and how an answer states it.

Four policies per application: ``reads`` (GETs of the application, its chats and messages),
``writes`` (creations of chats and messages, edits, renames, token changes), ``searches``
(the expensive reads) and ``streams`` (live streams open at once). Each rate policy is a
token bucket: ``per_second`` sustained, up to ``burst`` at once. The defaults are the
``CHATD_RATE_*`` settings; the admin may override any of them per application.

Every answer to a request that reached its application states the policy it counted against
in the fields of draft-ietf-httpapi-ratelimit-headers (-11, the syntax of -10 onwards): a
Structured Fields list item named by a String, with the quota ``q`` over a window ``w`` in
seconds, and the available quota ``r`` with the seconds ``t`` until the bucket is full again::

    RateLimit-Policy: "writes";q=200;w=2
    RateLimit: "writes";r=57;t=1

A bucket of ``burst`` refilling at ``per_second`` is stated as ``burst`` per
``ceil(burst / per_second)`` seconds: exact when that divides, and never more than the bucket
admits when it does not. Live streams are a concurrency quota (``qu="concurrent-requests"``).
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

READS, WRITES, SEARCHES, STREAMS = "reads", "writes", "searches", "streams"
RATE_POLICIES = (READS, WRITES, SEARCHES)

# The override fields an admin may set, and what each must be: per_second a number above 0,
# burst an integer of 1 or more, streams an integer of 0 or more (0: no live streams).
OVERRIDE_FIELDS = {
    **{f"{name}_per_second": "rate" for name in RATE_POLICIES},
    **{f"{name}_burst": "count" for name in RATE_POLICIES},
    STREAMS: "streams",
}
# A live stream's slot is a lease in Redis, renewed every third of it by the process that holds
# it: the slots of a process that died stop counting within this time.
STREAM_LEASE_SECONDS = 60.0
# Largest value any field takes: far past anything a process serves, small enough for any clock.
MAX_VALUE = 1_000_000


@dataclass(frozen=True)
class Policy:
    """A token bucket: ``burst`` requests at once, refilled at ``per_second``."""

    name: str
    per_second: float
    burst: int
    interval: float = field(init=False)
    capacity: float = field(init=False)
    # The RateLimit-Policy field, made once: every answer that counted against it carries it.
    header: str = field(init=False)
    # Part of the bucket's key: a bucket's state (a time) means something for one rate only, so
    # an override starts a new, full bucket and applies from the next request, whichever way it goes.
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.name}:{self.per_second:g}:{self.burst}")
        interval = 1.0 / self.per_second
        object.__setattr__(self, "interval", interval)
        object.__setattr__(self, "capacity", self.burst * interval)
        window = max(1, math.ceil(self.burst / self.per_second - 1e-9))
        object.__setattr__(self, "header", f'"{self.name}";q={self.burst};w={window}')


@dataclass(frozen=True)
class StreamPolicy:
    """At most ``concurrent`` live streams of one application open at once, across every process."""

    concurrent: int
    name: str = STREAMS
    header: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "header", f'"{self.name}";q={self.concurrent};qu="concurrent-requests"')


@dataclass(frozen=True)
class Limits:
    """One application's four policies, and which fields the admin overrode."""

    reads: Policy
    writes: Policy
    searches: Policy
    streams: StreamPolicy
    overrides: Mapping[str, float] = field(default_factory=dict)

    def rate(self, name: str) -> Policy:
        policy: Policy = getattr(self, name)
        return policy

    def values(self) -> dict[str, Any]:
        """The effective values by override field name (what the admin endpoint shows)."""
        shown: dict[str, Any] = {}
        for name in RATE_POLICIES:
            policy = self.rate(name)
            shown[f"{name}_per_second"] = policy.per_second
            shown[f"{name}_burst"] = policy.burst
        shown[STREAMS] = self.streams.concurrent
        return shown

    def with_overrides(self, overrides: Mapping[str, float]) -> Limits:
        """These limits with ``overrides`` (validated fields) in place of their values."""
        values = {**self.values(), **overrides}
        rates = {
            name: Policy(name, float(values[f"{name}_per_second"]), int(values[f"{name}_burst"]))
            for name in RATE_POLICIES
        }
        return Limits(**rates, streams=StreamPolicy(int(values[STREAMS])), overrides=dict(overrides))


def defaults(values: Mapping[str, float]) -> Limits:
    """Limits from every field's value (the settings': ``rate_reads_per_second`` -> ``reads_per_second``)."""
    base = Limits(
        Policy(READS, 1.0, 1), Policy(WRITES, 1.0, 1), Policy(SEARCHES, 1.0, 1), StreamPolicy(0), overrides={}
    )
    limits = base.with_overrides(values)
    return Limits(limits.reads, limits.writes, limits.searches, limits.streams)


def validate_overrides(data: object) -> dict[str, float]:
    """The override fields of ``data`` (a JSON object), checked; ValueError says what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("'limits' must be an object of override fields")
    unknown = sorted(set(data) - set(OVERRIDE_FIELDS))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}; the fields are {', '.join(OVERRIDE_FIELDS)}")
    checked: dict[str, float] = {}
    for name, value in data.items():
        if value is None:
            continue  # null: back to the default
        kind = OVERRIDE_FIELDS[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"'{name}' must be a number")
        if kind != "rate" and value != int(value):
            raise ValueError(f"'{name}' must be a whole number")
        low = 0 if kind == "streams" else (1 if kind == "count" else 0.001)
        if not low <= value <= MAX_VALUE:
            raise ValueError(f"'{name}' must be from {low:g} to {MAX_VALUE:,}")
        checked[name] = float(value) if kind == "rate" else int(value)
    return checked


class Verdict(NamedTuple):
    """What a check decided, as the answer states it (a tuple: made on every request, it must be cheap)."""

    policy: Policy | StreamPolicy
    allowed: bool
    remaining: int
    # Whole seconds until the bucket is full again (a refusal: until one request is admitted).
    reset: int

    def headers(self) -> dict[str, str]:
        return {"RateLimit-Policy": self.policy.header, "RateLimit": self.field()}

    def field(self) -> str:
        if isinstance(self.policy, StreamPolicy):
            return f'"{self.policy.name}";r={self.remaining}'
        return f'"{self.policy.name}";r={self.remaining};t={self.reset}'


# The verdict of the request in hand, set by the limiter and read by the error middleware, which
# puts its fields on the answer (a 404 after the check too). Reset at the start of each request.
current: contextvars.ContextVar[Verdict | None] = contextvars.ContextVar("rate_limit_verdict", default=None)
