"""Reading /metrics the way Prometheus does, for tests."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: Any) -> Samples:
    """Every sample of a chatd process's /metrics, keyed by name and labels."""
    response = await client.get("/metrics")
    assert response.status == 200, await response.text()
    return parse(await response.text())


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value, 0 if the process has none (a counter or histogram not touched yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}
