"""The create path's cost of the rate limits: (a)'s measurement with them off and on, side by side.

Three targets run at once, idle but for the round being measured: chatd with ``CHATD_RATE_LIMITS=0``,
chatd with the limits on at rates the load never reaches (every request checked, answered with
its fields, none refused), and the ceiling; wrk -c64 POST message in alternating rounds of each
(ceiling, off, on, ceiling, on, off, ...), so that a busy moment of the shared machine falls on
all of them, and neither of off and on always follows the other. Reported: each one's median
round, chatd / ceiling with the limits off and on, and the median over rounds of on / off; and,
less at the mercy of the shared machine, the api process's CPU time per answer in each round
(/proc), off and on: what the check costs the process, apart from what the machine was doing.

Two loads: one tenant (a busy bucket: on the real set most checks are made from tokens the api
process took ahead from Redis), and 200 tenants in turn (bench/spread_messages.lua: about 20
requests a second each, too few to lease: a Redis check every request or two, batched per loop turn).
"""

from __future__ import annotations

import itertools
import logging
import statistics
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench import loadgen
from bench.deploy import Ceiling, Deployment, deployment, pid_of
from bench.phases import WORD, Acceptance, Options
from bench.probe import Client
from bench.procstat import cpu_seconds
from bench.report import SET_NAMES, rate, ratio, table

logger = logging.getLogger("bench")

# "off again" is a second process with the limits off, measured like the others: how far apart
# two identical processes land in this run (an A/A control) is the yardstick for on / off.
VARIANTS: dict[str, dict[str, object]] = {
    "off": {"rate_limits": False},
    "off again": {"rate_limits": False},
    "on": {"rate_limits": True},
}
# Every order of the three chatd targets, one a round in turn.
ORDERS = tuple(itertools.permutations(VARIANTS))
SPREAD_SCRIPT = Path(__file__).with_name("spread_messages.lua")
SPREAD_TENANTS = 200
LOADS = ("one tenant", f"{SPREAD_TENANTS} tenants")


@dataclass
class LimitsAB:
    # (load, target) -> rounds; targets: ceiling, off, on
    rounds: dict[tuple[str, str], list[loadgen.WrkResult]]
    # (load, off|on) -> the api process's CPU microseconds per answer, per round
    cpu_us: dict[tuple[str, str], list[float]]

    def median(self, load: str, name: str) -> loadgen.WrkResult:
        return Acceptance.median_round(self.rounds[(load, name)])

    def ratio(self, load: str, name: str) -> float:
        return self.median(load, name).ok_per_s / self.median(load, "ceiling").ok_per_s

    def refused(self, load: str, name: str) -> int:
        return sum(result.non_2xx for result in self.rounds[(load, name)])

    def over(self, load: str, name: str, base: str = "off") -> float:
        """The median over rounds of ``name``'s 2xx/s over ``base``'s in the same round."""
        pairs = zip(self.rounds[(load, name)], self.rounds[(load, base)], strict=True)
        return statistics.median(a.ok_per_s / b.ok_per_s for a, b in pairs)

    def cpu_per_answer(self, load: str, name: str) -> float:
        return statistics.median(self.cpu_us[(load, name)])

    def cpu_over(self, load: str, name: str, base: str = "off") -> float:
        pairs = zip(self.cpu_us[(load, name)], self.cpu_us[(load, base)], strict=True)
        return statistics.median(a / b for a, b in pairs)


@dataclass
class _Target:
    url: str
    one: str  # an application with ``options.chats`` chats
    spread: list[str]  # SPREAD_TENANTS applications of one chat each
    chatd: Deployment | None


async def create_ab(backend_set: str, ceiling: Ceiling, options: Options, folder: Path) -> LimitsAB:
    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        targets: dict[str, _Target] = {}
        for name, overrides in VARIANTS.items():
            chatd = await stack.enter_async_context(deployment(backend_set, folder / f"limits-{name}", 0, **overrides))
            client = Client(session, chatd.url)
            one = await client.create_application(f"bench limits {name}")
            for _ in range(options.chats):
                await client.create_chat(one)
            spread = []
            for index in range(SPREAD_TENANTS):
                spread.append(await client.create_application(f"bench limits {name} {index}"))
                await client.create_chat(spread[-1])
            targets[name] = _Target(chatd.url, one, spread, chatd)
        # The ceiling takes any token.
        targets = {"ceiling": _Target(ceiling.url, targets["off"].one, targets["off"].spread, None), **targets}
        rounds: dict[tuple[str, str], list[loadgen.WrkResult]] = {(load, t): [] for load in LOADS for t in targets}
        cpu_us: dict[tuple[str, str], list[float]] = {(load, t): [] for load in LOADS for t in VARIANTS}
        for load in LOADS:
            for target in targets.values():
                await _wrk(load, target, options, options.warmup_s)
            for index in range(options.rounds):
                for name in _order(index):
                    target = targets[name]
                    pid = pid_of(target.chatd.api) if target.chatd is not None else None
                    spent = cpu_seconds(pid) if pid is not None else 0.0
                    rounds[(load, name)].append(result := await _wrk(load, target, options, options.round_s))
                    if pid is not None:
                        cpu_us[(load, name)].append((cpu_seconds(pid) - spent) * 1e6 / max(1, result.requests))
                    logger.info("  %-12s %-8s %8.0f 2xx/s  p99 %6.1f ms", load, name, result.ok_per_s, result.p99_ms)
    return LimitsAB(rounds, cpu_us)


def _order(index: int) -> tuple[str, ...]:
    """The targets of round ``index``: the ceiling, then the three chatd processes, in another order each round.

    Whatever a round leaves behind (the disk flushing what the last target wrote, a server
    checkpointing) falls on the one measured next: with off always before on, on paid for both
    (measured: on / off 0.85 on the embedded set, 4 rounds of 5 below 1).
    """
    return ("ceiling", *ORDERS[index % len(ORDERS)])


async def _wrk(load: str, target: _Target, options: Options, seconds: float) -> loadgen.WrkResult:
    try:
        if load == LOADS[0]:
            return await loadgen.wrk(
                target.url,
                target.one,
                options.chats,
                WORD,
                seconds=seconds,
                connections=options.connections,
                threads=options.threads,
            )
        data = await loadgen.wrk_json(
            SPREAD_SCRIPT, target.url, [",".join(target.spread)], seconds=seconds, connections=options.connections
        )
        return loadgen.wrk_result(data)
    finally:
        if target.chatd is not None:
            target.chatd.check_alive()


def ab_table(results: dict[str, LimitsAB], options: Options) -> str:
    rows = []
    for backend_set, ab in results.items():
        for load in LOADS:
            off, on = ab.median(load, "off"), ab.median(load, "on")
            rows.append(
                [
                    SET_NAMES[backend_set],
                    load,
                    ratio(ab.ratio(load, "off")),
                    ratio(ab.ratio(load, "on")),
                    f"{ab.over(load, 'on'):.3f}",
                    f"{ab.over(load, 'off again'):.3f}",
                    rate(off.ok_per_s),
                    rate(on.ok_per_s),
                    rate(ab.median(load, "ceiling").ok_per_s),
                    f"{ab.cpu_per_answer(load, 'off'):.0f}, {ab.cpu_per_answer(load, 'on'):.0f}",
                    f"{1 / ab.cpu_over(load, 'on'):.3f}",
                    f"{1 / ab.cpu_over(load, 'off again'):.3f}",
                    f"{ab.refused(load, 'on')} / {ab.refused(load, 'off')}",
                ]
            )
    header = ["backends", "load", "chatd / ceiling, off", "chatd / ceiling, on", "on / off", "A/A: off again / off"]
    header += ["chatd 2xx/s off", "chatd 2xx/s on", "ceiling 2xx/s", "api CPU µs per answer off, on"]
    header += ["per CPU second: on / off", "A/A per CPU second", "non-2xx on / off"]
    return (
        f"**The create path with and without the rate limits.** wrk -t{options.threads} -c{options.connections} "
        f"POST message, over {options.chats} chats of one application, or over {SPREAD_TENANTS} applications of one "
        "chat each (no bucket busy enough to lease tokens ahead: a Redis check every request or two); "
        "`--role api` processes with the limits off (`CHATD_RATE_LIMITS=0`), twice, and one with them on at rates "
        f"the load never reaches (none refused), no worker, started together; {options.rounds} rounds of "
        f"{options.round_s:g} s of the ceiling then the three in another order each round. Ratios are medians over "
        "rounds of one target's figure over another's in the same round; \"off again / off\" compares two identical "
        "processes (an A/A control): on / off means something only as far as that one is near 1. Per CPU second: "
        "answers per second of the api process's user + system time (/proc) in the round. "
        "Target: on / off at least 0.95.\n\n" + table(header, rows)
    )
