"""(f) Two tenants: one floods, the other posts at a modest rate beside it.

For each backend set, with the per-application limits off (``CHATD_RATE_LIMITS=0``: what chatd
did before them) and then on (the ``CHATD_RATE_*`` defaults), on a fresh deployment each (one
``--role api`` process and no worker, as the acceptance phase: what is measured is the api tier
the tenants share):

1. the paced tenant alone: wrk with bench/paced_messages.lua, a few connections that each wait
   between their requests (about 50 messages a second), for a round: its p95;
2. the flooding tenant (wrk -c64 with bench/post_messages.lua, as fast as it can: its runaway
   loop) and the paced tenant together, for a round: the paced tenant's p95 again, and the
   flood's 2xx and refused (429) answers a second.

Alternately, ``rounds`` times each (as the acceptance phase alternates chatd and the ceiling, so
that a busy moment of the shared machine hits both); the median round of each is reported.

The target: the paced tenant's p95 beside the flood within twice its p95 alone. Every load
client is wrk (C), on the same two cores as chatd and its servers.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bench import loadgen
from bench.deploy import deployment
from bench.phases import WORD, Options
from bench.probe import Client
from bench.report import ms, rate, table
from chatd.settings import Settings

logger = logging.getLogger("bench")
T = TypeVar("T")

PACED_SCRIPT = Path(__file__).with_name("paced_messages.lua")
PACED_CONNECTIONS = 2
PACED_DELAY_MS = 40
FLOOD_CONNECTIONS = 64


@dataclass(frozen=True)
class Paced:
    requests: int
    refused: int  # answers of 400 and above: the paced tenant is never over its limits
    per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True)
class TenantsRun:
    limits: str  # "off" or "on"
    alone: Paced
    beside: Paced
    flood: loadgen.WrkResult

    @property
    def slowdown(self) -> float:
        return self.beside.p95_ms / self.alone.p95_ms


def limit_settings(on: bool) -> dict[str, Any]:
    """The deployment's settings: limits off, or on at the production defaults (not the tests' unreached ones)."""
    if not on:
        return {"rate_limits": False}
    defaults = Settings()
    values = {f"rate_{name}": value for name, value in defaults.rate_limit_values().items()}
    return {"rate_limits": True, **values, "rate_refusal_hold_seconds": defaults.rate_refusal_hold_seconds}


async def paced(url: str, token: str, chats: int, seconds: float) -> Paced:
    data = await loadgen.wrk_json(
        PACED_SCRIPT, url, [token, str(chats), str(PACED_DELAY_MS)], seconds=seconds, connections=PACED_CONNECTIONS
    )
    duration = data["duration_us"] / 1e6
    return Paced(
        requests=data["requests"],
        refused=data["status_errors"],
        per_s=data["requests"] / duration,
        p50_ms=data["p50_us"] / 1000,
        p95_ms=data["p95_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )


async def two_tenants(backend_set: str, options: Options, folder: Path, limits_on: bool) -> TenantsRun:
    name = "on" if limits_on else "off"
    async with (
        deployment(backend_set, folder / f"tenants-{name}", workers=0, **limit_settings(limits_on)) as chatd,
        aiohttp.ClientSession() as session,
    ):
        client = Client(session, chatd.url)
        flooder = await client.create_application("bench flooding tenant")
        for _ in range(options.chats):
            await client.create_chat(flooder)
        quiet = await client.create_application("bench paced tenant")
        for _ in range(2):
            await client.create_chat(quiet)
        await paced(chatd.url, quiet, 2, options.warmup_s)  # fills the process's memos, as (a) does
        alone_rounds, beside_rounds = [], []
        for _ in range(options.rounds):
            alone_rounds.append(await paced(chatd.url, quiet, 2, options.round_s))
            flood_run = loadgen.wrk(
                chatd.url,
                flooder,
                options.chats,
                WORD,
                seconds=options.round_s,
                connections=FLOOD_CONNECTIONS,
                threads=options.threads,
            )
            beside_rounds.append(await asyncio.gather(flood_run, paced(chatd.url, quiet, 2, options.round_s)))
            chatd.check_alive()
    alone = _median(alone_rounds, lambda run: run.p95_ms)
    flood, beside = _median(beside_rounds, lambda pair: pair[1].p95_ms)
    run = TenantsRun(name, alone, beside, flood)
    logger.info(
        "  limits %-3s paced p95 %6.1f ms alone, %6.1f ms beside the flood (%.2fx); flood %.0f 2xx/s, %.0f refused/s",
        name,
        alone.p95_ms,
        beside.p95_ms,
        run.slowdown,
        flood.ok_per_s,
        flood.non_2xx / flood.duration_s,
    )
    return run


def _median(rounds: list[T], value: Callable[[T], float]) -> T:
    """The round whose ``value`` is the median (the lower of an even count): its figures go together."""
    middle = statistics.median_low(value(round_) for round_ in rounds)
    return next(round_ for round_ in rounds if value(round_) == middle)


def tenants_table(runs: dict[str, list[TenantsRun]], options: Options) -> str:
    from bench.report import SET_NAMES

    rows = []
    for backend_set, set_runs in runs.items():
        for run in set_runs:
            rows.append(
                [
                    SET_NAMES[backend_set],
                    run.limits,
                    f"{run.alone.per_s:.0f}",
                    ms(run.alone.p95_ms),
                    ms(run.beside.p95_ms),
                    f"{run.slowdown:.2f}x",
                    f"{run.beside.refused}",
                    rate(run.flood.ok_per_s),
                    rate(run.flood.non_2xx / run.flood.duration_s),
                    ms(run.flood.p99_ms),
                ]
            )
    header = ["backends", "limits", "paced req/s", "paced p95 alone", "paced p95 beside the flood", "ratio"]
    header += ["paced non-2xx", "flood 2xx/s", "flood refused/s", "flood p99"]
    return (
        f"**(f) Two tenants.** One api process, no worker. The paced tenant: wrk -c{PACED_CONNECTIONS} POST message, "
        f"each connection waiting {PACED_DELAY_MS} ms between requests, for {options.round_s:g} s alone, then as "
        f"long beside the flooding tenant (wrk -c{FLOOD_CONNECTIONS} POST message as fast as it can, "
        f"{options.chats} chats); {options.rounds} rounds of each, alternately, the median reported. "
        "Limits off: `CHATD_RATE_LIMITS=0`; on: the `CHATD_RATE_*` defaults. Target: "
        "ratio (p95 beside / p95 alone) at most 2.\n\n" + table(header, rows)
    )
