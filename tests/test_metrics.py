"""The request metrics kept without locks export what prometheus_client's own types would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from chatd.metrics import RequestMetrics


def _samples(registry: CollectorRegistry) -> set[str]:
    return {line for line in generate_latest(registry).decode().splitlines() if not line.startswith("#")}


def test_request_metrics_match_prometheus_client_counter_and_histogram() -> None:
    ours, reference = CollectorRegistry(), CollectorRegistry()
    metrics = RequestMetrics()
    ours.register(metrics)
    counter = Counter("chatd_http_requests", "x", ["method", "route", "status"], registry=reference)
    histogram = Histogram("chatd_http_request_seconds", "x", ["route"], registry=reference)
    observed = [
        ("POST", "/a", 201, 0.005),  # exactly on a bound: that bucket (le means <=)
        ("POST", "/a", 201, 0.0051),
        ("GET", "/a", 404, 0.0),
        ("GET", "/b", 499, 12.5),  # past every bound: +Inf only
        ("GET", "/b", 200, 1.0),
    ]
    for method, route, status, seconds in observed:
        metrics.observe(method, route, status, seconds)
        counter.labels(method, route, str(status)).inc()
        histogram.labels(route).observe(seconds)
    reference_samples = {sample for sample in _samples(reference) if "_created" not in sample}
    assert _samples(ours) == reference_samples
