"""Prometheus metrics, served at ``/metrics`` by every role."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
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
NUMBERS_BURNT = Counter(
    "chatd_numbers_burnt_total",
    "Numbers taken whose job could not be queued (gaps, unless a retry with the same Idempotency-Key fills them)",
)
CREATIONS_SHED = Counter(
    "chatd_creations_shed_total", "Creations refused at once (503 overloaded) because too many were waiting"
)
TOKEN_CHANGES = Counter(
    "chatd_token_changes_total",
    "Application tokens rotated (kind=rotated: the old one kept for a grace period; rotated_and_revoked:"
    " not kept) or previous tokens revoked (kind=revoked)",
    ["kind"],
)
# Per policy (reads, writes, searches, streams), never per application: tenants are unbounded in
# number; the log names the applications (chatd.limits.limiter).
RATE_LIMITED = Counter(
    "chatd_rate_limited_total", "Requests refused with 429 rate_limited, by the policy they were over", ["policy"]
)
JOBS_DEAD = Counter("chatd_jobs_dead_lettered_total", "Queued jobs moved to the dead-letter queue", ["topic"])


# ``labels()`` builds and looks up its key under a lock on every call; the label sets of these
# are few (kinds of number), so their children are kept.
@lru_cache(maxsize=8)
def numbers(kind: str) -> Any:
    return NUMBERS.labels(kind)


# -- The operator's view (README "Operating chatd"): updated per batch, per loop run or per
# scrape, never per request, so prometheus_client's own (locked) types cost nothing that matters.

# Sampled when /metrics is scraped (chatd.backlog): every role reports what it sees of the
# shared queues, so alert on max by (topic), which still answers while every worker is down.
QUEUE_DEPTH = Gauge("chatd_queue_depth", "Jobs waiting in a topic's queue (RabbitMQ: messages as jobs)", ["topic"])
QUEUE_DEAD = Gauge("chatd_queue_dead_letters", "Jobs in a topic's dead-letter queue", ["topic"])
QUEUE_OLDEST_AGE = Gauge(
    "chatd_queue_oldest_job_age_seconds",
    "Age of the oldest job not yet acked (embedded: in the queue; RabbitMQ: prefetched by this process)",
    ["topic"],
)
BACKEND_UP = Gauge("chatd_backend_up", "1 if the backend answered its ping at the last scrape, else 0", ["backend"])
SAMPLE_SECONDS = Gauge("chatd_backlog_sample_seconds", "Time the last scrape took to sample queues and backends")

# From the 201's numbering time (the job's created_at) to the commit that stored it, and to
# the bulk write that made a new message searchable: the README's promise, measured.
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
STORED_LAG = Histogram(
    "chatd_stored_lag_seconds", "From a creation's 201 to the commit that stored it", ["kind"], buckets=LAG_BUCKETS
)
SEARCHABLE_LAG = Histogram(
    "chatd_searchable_lag_seconds",
    "From a message's 201 to the bulk write that made it searchable",
    buckets=LAG_BUCKETS,
)
BATCH_SIZE = Histogram(
    "chatd_batch_jobs",
    "Jobs a consumer took in one batch",
    ["topic"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
BATCH_SECONDS = Histogram("chatd_batch_seconds", "Time a consumer took to handle and settle one batch", ["topic"])
JOBS_RETRIED = Counter("chatd_jobs_retried_total", "Jobs given back to their queue to be delivered again", ["topic"])
# backend: store, search, broker, redis (or other); kind: unavailable (could not be reached or
# timed out), rejected (answered, but refused part of the work).
BACKEND_ERRORS = Counter("chatd_backend_errors_total", "Backend failures seen by chatd", ["backend", "kind"])
# The same outages by engine (sqlite, mysql, redis, rabbitmq, elasticsearch) and cause (connection,
# timeout, locked, disk_full, read_only, oom, ...): BackendUnavailable's own fields, a few dozen
# label pairs at most.
BACKEND_UNAVAILABLE = Counter(
    "chatd_backend_unavailable_total", "Backend outages seen by chatd, by engine and cause", ["backend", "cause"]
)
LOOP_RESTARTS = Counter("chatd_loop_restarts_total", "Background loops restarted after a crash", ["loop"])
RECONCILER_RUNS = Counter(
    "chatd_reconciler_runs_total", "Reconciler runs (skipped: another process held the lock)", ["outcome"]
)
RECONCILER_SECONDS = Histogram("chatd_reconciler_run_seconds", "Time one reconciler run took")
RECONCILER_LAST_SUCCESS = Gauge(
    "chatd_reconciler_last_success_timestamp_seconds", "When this process last finished a reconciler run (Unix time)"
)
# Updated by the live events endpoint (SSE / WebSocket) as clients come and go.
LIVE_CONNECTIONS = Gauge("chatd_live_connections", "Open live-event connections (SSE and WebSocket)", ["transport"])

# The role each engine plays, for chatd_backend_errors_total.
_ROLES = {"rabbitmq": "broker", "mysql": "store", "sqlite": "store", "elasticsearch": "search", "redis": "redis"}


def backend_of(error: BaseException) -> str:
    """The role of the backend a ``BackendUnavailable`` is about (store, search, broker, redis, other)."""
    return _ROLES.get(getattr(error, "backend", ""), "other")


def backend_error(error: BaseException, kind: str = "unavailable") -> None:
    BACKEND_ERRORS.labels(backend_of(error), kind).inc()
    if kind == "unavailable":
        engine, cause = getattr(error, "backend", "unknown"), getattr(error, "cause", "unknown")
        BACKEND_UNAVAILABLE.labels(str(engine), str(cause)).inc()
