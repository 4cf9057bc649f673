"""The generic cell rate algorithm: a token bucket kept as one number per bucket.

A bucket that holds ``burst`` requests and refills at ``per_second`` is stored as its
*theoretical arrival time* (TAT): when the bucket would be full again if no request came. A
request at ``now`` is admitted when, after adding its own ``interval`` (1 / per_second), the
TAT is at most ``burst`` intervals ahead of ``now``. One read and one write per check, no
timer, and a bucket that is full again is the same as no bucket (its key may expire).

A check may take up to ``want`` tokens at once (as many as the bucket holds, at least one to
admit the request): an api process leases the rest and admits that many more requests without
asking Redis (``chatd.limits.leases``).

``chatd.backends.redis_limits`` runs the same arithmetic in a Lua script (in microseconds);
``tests/limits`` checks both against each other.
"""

from __future__ import annotations

from chatd.domain import Hit

# Floating-point room when comparing times: a request exactly on its turn is admitted.
EPSILON = 1e-9  # chatd.limits.local's inline form uses it too


def decide(tat: float, now: float, interval: float, capacity: float, want: int = 1) -> tuple[Hit, float]:
    """The outcome of one request taking up to ``want`` tokens, and the bucket's new TAT (unchanged when refused).

    ``capacity`` is ``burst * interval``: how far ahead of ``now`` the TAT may run.
    """
    start = max(tat, now)
    room = int((now + capacity - start) / interval + EPSILON)
    if room < 1:
        return Hit(False, start + interval - now - capacity, start - now, 0), tat
    taken = min(want, room)
    new_tat = start + taken * interval
    return Hit(True, 0.0, new_tat - now, taken), new_tat


def remaining(hit: Hit, interval: float, capacity: float) -> int:
    """Requests the bucket would still admit at once, after ``hit``."""
    if not hit.allowed:
        return 0
    return max(0, int((capacity - hit.reset) / interval + EPSILON))
