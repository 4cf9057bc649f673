"""Prometheus metrics, served at ``/metrics`` by every role."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from prometheus_client import Counter, Histogram

REQUESTS = Counter("chatd_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
REQUEST_SECONDS = Histogram("chatd_http_request_seconds", "Time to answer an HTTP request", ["route"])
NUMBERS = Counter("chatd_numbers_handed_out_total", "Chat and message numbers handed to clients", ["kind"])
JOBS_DONE = Counter("chatd_jobs_done_total", "Queued jobs processed and acked", ["topic"])
ACCEPT_GROUP_SIZE = Histogram(
    "chatd_accept_group_size",
    "Creation requests numbered and published together (group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
JOBS_DEAD = Counter("chatd_jobs_dead_lettered_total", "Queued jobs moved to the dead-letter queue", ["topic"])


# ``labels()`` builds and looks up its key under a lock on every call; the hot paths ask the
# same few label sets over and over, so their children are kept (the label sets are bounded:
# routes, methods and statuses chatd answers with).
@lru_cache(maxsize=4096)
def request_counter(method: str, route: str, status: int) -> Any:
    return REQUESTS.labels(method, route, str(status))


@lru_cache(maxsize=1024)
def request_timer(route: str) -> Any:
    return REQUEST_SECONDS.labels(route)


@lru_cache(maxsize=8)
def numbers(kind: str) -> Any:
    return NUMBERS.labels(kind)
