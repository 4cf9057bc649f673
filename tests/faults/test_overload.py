"""Overload: a flood at three times the api's capacity is answered in time, 201 or 503, in bounded memory.

One api and one worker process on the real set under the steady load of test_faults.py. The
api's capacity is measured first (wrk -c64 for a few seconds, creations a second); then wrk
floods it for ``FLOOD_SECONDS`` from ``IN_FLIGHT_SECONDS`` of that capacity in connections (at
most ``MAX_CONNECTIONS``), each pacing its requests so that together they offer three times the
capacity. wrk keeps one request per connection in flight, so once the api falls behind it is the
requests in flight, not the offered rate, that pile up in an api that does not shed: three
seconds of capacity waiting is within the deadline only if the api sheds or keeps its capacity.
Every answer must come within the request deadline plus the load's margin (counted from wrk's
latency histogram, tests/faults/flood.lua) and be a 201 or a 503, the api's resident memory must not grow by more than
``RSS_GROWTH_MIB``, and the steady load's verdict must be clean.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from bench.procstat import rss_mib
from tests.conftest import Namespace
from tests.faults.flood import Flood, capacity, flood
from tests.faults.load import LATE_MARGIN, LoadClient, request_deadline
from tests.faults.test_faults import Cluster, survive
from tests.processes import application_and_chat

pytestmark = [pytest.mark.faults, pytest.mark.real, pytest.mark.timeout(600)]

FLOOD_SECONDS = 10.0
IN_FLIGHT_SECONDS = 3.0
# 10,000 connections make answers late (116 past 6 s in one run) while no handler took over 0.5 s:
# the time is spent queued before the handler (kernel queues, a starved loop), which the
# request deadline does not cover yet. Bounded at 1,000 until chatd sheds before the handler too.
MAX_CONNECTIONS = 1_000
OVERLOAD = 3.0
RSS_GROWTH_MIB = 150.0


async def test_flood_at_three_times_capacity(tmp_path: Path, record_fault) -> None:  # type: ignore[no-untyped-def]
    seen: dict[str, object] = {}

    async def fault(cluster: Cluster) -> None:
        api = cluster.first("api")
        assert api.process is not None
        async with aiohttp.ClientSession() as session:
            token, chat = await application_and_chat(session, "flood", api.url)
        timeout = request_deadline() + LATE_MARGIN
        measured = await capacity(api.url, token, chat, timeout=timeout)
        assert measured > 50, f"the api created {measured:.0f} messages a second: not a capacity"
        offered = OVERLOAD * measured
        connections = min(MAX_CONNECTIONS, max(100, round(IN_FLIGHT_SECONDS * measured)))
        before = rss_mib(api.process.pid)
        peak = before
        flooding = asyncio.create_task(
            flood(
                api.url,
                token,
                chat,
                seconds=FLOOD_SECONDS,
                connections=connections,
                timeout=timeout,
                delay_ms=1000 * connections / offered,
            )
        )
        while not flooding.done():
            peak = max(peak, rss_mib(api.process.pid))
            await asyncio.sleep(0.25)
        result: Flood = flooding.result()
        seen.update(capacity=measured, offered=offered, flood=result, rss_before=before, rss_peak=peak)
        print(
            f"\noverload: capacity {measured:.0f}/s, offered {offered:.0f}/s from {connections} connections; "
            f"{result.line()}; "
            f"api RSS {before:.0f} MiB before, {peak:.0f} MiB at the peak"
        )
        # The flood's answers count in the verdict with the steady load's.
        assert loads, "the load did not start"
        loads[0].result.answers_500 += result.answers_500
        loads[0].result.late += result.late

    async def load_started(cluster: Cluster, load: LoadClient) -> None:
        loads.append(load)

    loads: list[LoadClient] = []
    namespace = Namespace("real", tmp_path)
    cluster = Cluster(namespace, tmp_path, roles=("api", "worker"))
    await survive("overload: a flood at 3x the api's capacity", cluster, fault, record_fault, load_started=load_started)
    result = seen["flood"]
    assert isinstance(result, Flood)
    assert result.other == 0, f"the flood got answers other than 201 and 503: {result.line()}"
    assert result.created + result.unavailable > 0, result.line()
    growth = float(seen["rss_peak"]) - float(seen["rss_before"])  # type: ignore[arg-type]
    assert growth <= RSS_GROWTH_MIB, f"the api grew by {growth:.0f} MiB under the flood"
