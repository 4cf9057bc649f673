"""What /metrics samples from the backends when it is scraped: queue depths, dead letters, the
age of the oldest job not yet acked, and whether each backend answers.

Sampled per scrape rather than by a loop of its own: nothing is spent when nobody looks, and
the answer is never older than the scrape. Every role samples (an api process sees the shared
queues too), so a backlog still shows while every worker process is down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol, runtime_checkable

from chatd import jobs, metrics
from chatd.ports import Backend, Backends

logger = logging.getLogger(__name__)

# A scrape must answer even while a backend hangs: each probe is bounded, and all run at once.
PROBE_TIMEOUT = 2.0


@runtime_checkable
class QueueStats(Protocol):
    """What a queue adapter can tell an operator beyond ``depth`` (both adapters implement it)."""

    async def dead_depth(self, topic: str) -> int:
        """Jobs in the topic's dead-letter queue."""
        ...

    async def oldest_age(self, topic: str) -> float | None:
        """Seconds since the oldest job not yet acked was queued; None if this process cannot tell."""
        ...


async def sample(backends: Backends) -> None:
    """Refresh the backlog and backend gauges; a probe that fails leaves its gauge as it was."""
    started = time.perf_counter()
    probes: list[Any] = [_ping(backend) for backend in _distinct(backends.all())]
    queue = backends.queue
    for topic in jobs.TOPICS:
        probes.append(_gauge(metrics.QUEUE_DEPTH, topic, queue.depth(topic)))
        if isinstance(queue, QueueStats):
            probes.append(_gauge(metrics.QUEUE_DEAD, topic, queue.dead_depth(topic)))
            probes.append(_age(topic, queue.oldest_age(topic)))
    await asyncio.gather(*probes)
    metrics.SAMPLE_SECONDS.set(time.perf_counter() - started)


def _distinct(backends: list[Backend]) -> list[Backend]:
    # The embedded backends share objects and names; one gauge per name.
    seen: dict[str, Backend] = {}
    for backend in backends:
        seen.setdefault(backend.name, backend)
    return list(seen.values())


async def _ping(backend: Backend) -> None:
    try:
        await asyncio.wait_for(backend.ping(), PROBE_TIMEOUT)
    except Exception as exc:  # down, whatever the way
        logger.debug("backend %s did not answer: %r", backend.name, exc)
        metrics.BACKEND_UP.labels(backend.name).set(0)
    else:
        metrics.BACKEND_UP.labels(backend.name).set(1)


async def _gauge(gauge: Any, topic: str, probe: Any) -> None:
    try:
        gauge.labels(topic).set(await asyncio.wait_for(probe, PROBE_TIMEOUT))
    except Exception as exc:
        logger.debug("could not sample %s for %s: %r", gauge, topic, exc)


async def _age(topic: str, probe: Any) -> None:
    try:
        age = await asyncio.wait_for(probe, PROBE_TIMEOUT)
    except Exception as exc:
        logger.debug("could not sample the oldest job of %s: %r", topic, exc)
        return
    if age is None:
        # Not knowable here (no consumer of that topic in this process): no sample at all, so
        # that max by (topic) takes the processes that do know.
        try:
            metrics.QUEUE_OLDEST_AGE.remove(topic)
        except KeyError:
            pass
    else:
        metrics.QUEUE_OLDEST_AGE.labels(topic).set(age)
