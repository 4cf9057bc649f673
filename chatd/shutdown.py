"""The shutdown report: what a stopping process finished, retried and left queued (as arq does).

Logged once, as one INFO line, after the background loops and the requests have drained and
before the backends close, so that what is left in the queues can still be counted.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from prometheus_client import REGISTRY

from chatd import jobs, keys, metrics

logger = logging.getLogger(__name__)

# Counting the queues must not hold a shutdown up while a backend is down.
DEPTH_TIMEOUT = 2.0


async def report(app: web.Application) -> dict[str, Any]:
    """Log the report and return it (for tests)."""
    settings = app[keys.SETTINGS]
    summary: dict[str, Any] = {"role": settings.role}
    if settings.role in ("all", "api"):
        summary["requests_answered"] = sum(metrics.REQUEST_METRICS.counts.values())
        summary["numbers_handed_out"] = {
            kind: int(REGISTRY.get_sample_value("chatd_numbers_handed_out_total", {"kind": kind}) or 0)
            for kind in ("chat", "message")
        }
    if keys.SUPERVISOR in app:
        pipeline = app[keys.PIPELINE]
        summary["jobs"] = {
            consumer.topic: {
                "done": consumer.tally.done,
                "retried": consumer.tally.retried,
                "dead": consumer.tally.dead,
            }
            for consumer in (pipeline.chats, pipeline.messages, pipeline.indexer)
        }
        summary["reconciler_runs"] = pipeline.reconciler.runs
        summary["loop_restarts"] = dict(app[keys.SUPERVISOR].restarts)
    summary["left_queued"] = await _left_queued(app)
    logger.info("shutdown report", extra={"report": summary})
    return summary


async def _left_queued(app: web.Application) -> dict[str, int | str]:
    queue = app[keys.BACKENDS].queue
    left: dict[str, int | str] = {}
    for topic in jobs.TOPICS:
        try:
            left[topic] = await asyncio.wait_for(queue.depth(topic), DEPTH_TIMEOUT)
        except Exception as exc:  # a backend down: say so rather than guess
            left[topic] = f"unknown ({type(exc).__name__})"
    return left
