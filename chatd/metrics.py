"""Prometheus metrics, served at ``/metrics`` by every role."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector


class RequestMetrics(Collector):
    """``chatd_http_requests_total`` and ``chatd_http_request_seconds``, kept in plain dicts.

    prometheus_client's Counter and Histogram take a lock on every update (a histogram twice);
    every request updates both, and only the event loop's thread does, so here an update is
    a dict lookup and two additions, and the families are built when /metrics is scraped.
    """

    def __init__(self, buckets: tuple[float, ...] = Histogram.DEFAULT_BUCKETS):
        self.bounds = [bound for bound in buckets if bound != float("inf")]
        self.counts: dict[tuple[str, str, str], int] = {}
        # route -> [count per bucket (the last one past every bound), sum of seconds]
        self.durations: dict[str, list[float]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, str(status))
        self.counts[key] = self.counts.get(key, 0) + 1
        durations = self.durations.get(route)
        if durations is None:
            durations = self.durations[route] = [0.0] * (len(self.bounds) + 2)
        durations[bisect.bisect_left(self.bounds, seconds)] += 1
        durations[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "chatd_http_requests", "HTTP requests answered", labels=["method", "route", "status"]
        )
        for labels, count in list(self.counts.items()):
            requests.add_metric(list(labels), count)
        yield requests
        seconds = HistogramMetricFamily(
            "chatd_http_request_seconds", "Time to answer an HTTP request", labels=["route"]
        )
        for route, durations in list(self.durations.items()):
            cumulative, buckets = 0.0, list[tuple[str, float]]()
            for bound, hits in zip([*self.bounds, float("inf")], durations[:-1]):
                cumulative += hits
                buckets.append((_le(bound), cumulative))
            seconds.add_metric([route], buckets, sum_value=durations[-1])
        yield seconds


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


REQUEST_METRICS = RequestMetrics()
REGISTRY.register(REQUEST_METRICS)
NUMBERS = Counter("chatd_numbers_handed_out_total", "Chat and message numbers handed to clients", ["kind"])
JOBS_DONE = Counter("chatd_jobs_done_total", "Queued jobs processed and acked", ["topic"])
ACCEPT_GROUP_SIZE = Histogram(
    "chatd_accept_group_size",
    "Creation requests numbered and published together (group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
JOBS_DEAD = Counter("chatd_jobs_dead_lettered_total", "Queued jobs moved to the dead-letter queue", ["topic"])


# ``labels()`` builds and looks up its key under a lock on every call; the label sets of these
# are few (kinds of number), so their children are kept.
@lru_cache(maxsize=8)
def numbers(kind: str) -> Any:
    return NUMBERS.labels(kind)
