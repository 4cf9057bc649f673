"""Prometheus metrics, served at ``/metrics`` by every role."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("chatd_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
REQUEST_SECONDS = Histogram("chatd_http_request_seconds", "Time to answer an HTTP request", ["route"])
NUMBERS = Counter("chatd_numbers_handed_out_total", "Chat and message numbers handed to clients", ["kind"])
JOBS_DONE = Counter("chatd_jobs_done_total", "Queued jobs processed and acked", ["topic"])
JOBS_DEAD = Counter("chatd_jobs_dead_lettered_total", "Queued jobs moved to the dead-letter queue", ["topic"])
