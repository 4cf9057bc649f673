"""The three measurements of one backend set: acceptance, the reference design's ab, end to end.

Each phase starts its own deployment (bench/deploy.py) so that what one leaves queued does not
slow the next; the ceiling process is shared by the whole run.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench import loadgen
from bench.deploy import Ceiling, Deployment, deployment
from bench.loadgen import AbResult, WrkResult
from bench.probe import Client, LagProbe, wait_searchable
from bench.procstat import ProcessWatch, server_pids

logger = logging.getLogger("bench")


def log_progress() -> None:
    """The benchmark's own progress on stderr, timed; the backends' clients keep their defaults."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s bench: %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


# Every message wrk sends contains this word; searching it counts a chat's searchable messages.
WORD = "benchword"
# The reference design's body and command: ab -n ... -c ... -p message.json -T application/json.
AB_BODY = b'{"content": "Load test message"}'
AB_WORD = "load"


@dataclass(frozen=True)
class Options:
    rounds: int = 3
    round_s: float = 10.0
    warmup_s: float = 2.0
    connections: int = 64
    threads: int = 1
    chats: int = 10
    e2e_s: float = 60.0
    workers: tuple[int, ...] = (1,)
    ab_requests: int = 3000
    ab_concurrency: int = 10
    probe_rate: float = 5.0
    drain_timeout_s: float = 600.0


@dataclass
class Acceptance:
    ceiling_rounds: list[WrkResult]
    chatd_rounds: list[WrkResult]
    rss: dict[str, float]  # peak MiB of the api process and the ceiling during the rounds

    @staticmethod
    def median_round(rounds: list[WrkResult]) -> WrkResult:
        # The round whose rate is the median (the lower one of an even count): its latencies are
        # reported with it, so every figure on a line comes from one round.
        rate = statistics.median_low(r.ok_per_s for r in rounds)
        return next(r for r in rounds if r.ok_per_s == rate)

    @property
    def ceiling(self) -> WrkResult:
        return self.median_round(self.ceiling_rounds)

    @property
    def chatd(self) -> WrkResult:
        return self.median_round(self.chatd_rounds)

    @property
    def ratio(self) -> float:
        return self.chatd.ok_per_s / self.ceiling.ok_per_s


@dataclass
class AbPair:
    ceiling: AbResult
    chatd: AbResult
    searchable_after_s: float | None  # from ab's end until its messages were all searchable


@dataclass
class EndToEnd:
    workers: int
    load: WrkResult
    messages: int  # every message given a number during the run: wrk's, the probes', the sentinels'
    searchable: int  # how many of them the search found at the end (== messages unless timed out)
    all_searchable_s: float | None  # from the start of the load; None if the drain timed out
    load_s: float
    lag_p50_s: float | None
    lag_p99_s: float | None
    probes: int
    probes_failed: int
    rss_end_of_load: dict[str, float]  # MiB, per process (the servers' too on the real set)
    rss_peak: dict[str, float]
    cpu_s: dict[str, float]  # CPU seconds per process from the start of the load until all searchable

    @property
    def messages_per_s(self) -> float | None:
        return self.messages / self.all_searchable_s if self.all_searchable_s else None


async def _wrk(url: str, token: str, options: Options, seconds: float, chatd: Deployment) -> WrkResult:
    try:
        return await loadgen.wrk(
            url, token, options.chats, WORD, seconds=seconds, connections=options.connections, threads=options.threads
        )
    finally:
        # A figure measured against a dead process is no figure; and when wrk fails to connect,
        # the process's exit code and log say more than wrk does.
        chatd.check_alive()


async def _application_with_chats(client: Client, name: str, chats: int) -> str:
    token = await client.create_application(name)
    for _ in range(chats):
        await client.create_chat(token)
    return token


async def acceptance(
    backend_set: str, ceiling: Ceiling, options: Options, folder: Path, **overrides: object
) -> Acceptance:
    """wrk against one ``--role api`` process and the ceiling, in alternating rounds, no worker.

    No worker runs: on two cores a worker (and, on the real set, MariaDB and Elasticsearch
    storing and indexing behind it) takes CPU from the api, so the rate would mix what the api
    costs with what the pipeline costs. Without it the figure is what the api tier accepts:
    validate, take a number, queue the job durably, answer 201. The pipeline is measured end
    to end in its own phase. ``overrides``: settings of the deployment (the create-path A/B of the
    rate limits runs this phase with them off, and on at rates the load never reaches).
    """
    name = "acceptance" + "".join(f"-{key}={value}" for key, value in overrides.items())
    async with (
        deployment(backend_set, folder / name, workers=0, **overrides) as chatd,
        aiohttp.ClientSession() as session,
    ):
        token = await _application_with_chats(Client(session, chatd.url), "bench acceptance", options.chats)
        # The ceiling takes any token: chatd's makes the same requests and Location headers.
        targets = {"ceiling": ceiling.url, "chatd": chatd.url}
        rounds: dict[str, list[WrkResult]] = {name: [] for name in targets}
        watch = ProcessWatch({"api": chatd.pids()["api"], "ceiling": ceiling.pid})
        async with watch.running():
            for url in targets.values():
                # Not counted: the first requests fill chatd's caches (application ids, known chats).
                await _wrk(url, token, options, options.warmup_s, chatd)
            for _ in range(options.rounds):
                for name, url in targets.items():
                    rounds[name].append(result := await _wrk(url, token, options, options.round_s, chatd))
                    logger.info("  %-7s %8.0f 2xx/s  p99 %6.1f ms", name, result.ok_per_s, result.p99_ms)
    return Acceptance(rounds["ceiling"], rounds["chatd"], watch.peak)


async def reference_ab(client: Client, url: str, ceiling: Ceiling, options: Options, folder: Path) -> AbPair:
    """The reference design's ab run against one chat of chatd, and against the ceiling next to it."""
    body = folder / "message.json"
    body.write_bytes(AB_BODY)
    token = await _application_with_chats(client, "bench ab", 1)
    path = "/applications/{}/chats/1/messages"
    run = {"requests": options.ab_requests, "concurrency": options.ab_concurrency}
    on_ceiling = await loadgen.ab(ceiling.url + path.format(token), body, **run)
    on_chatd = await loadgen.ab(url + path.format(token), body, **run)
    # Waited for here so that the end-to-end phase starts with an empty pipeline.
    finished = time.monotonic()
    accepted = on_chatd.requests - on_chatd.non_2xx
    done, _ = await wait_searchable(client, token, {1: accepted}, AB_WORD, options.drain_timeout_s)
    return AbPair(on_ceiling, on_chatd, None if done is None else done - finished)


async def end_to_end(
    backend_set: str,
    ceiling: Ceiling,
    options: Options,
    folder: Path,
    workers: int,
    with_ab: bool,
    apis: int = 1,
    servers: Callable[[], dict[str, int]] = server_pids,
) -> tuple[AbPair | None, EndToEnd]:
    """``apis`` api + ``workers`` worker processes under wrk, then until every message is searchable.

    ``servers``: the server processes whose CPU and memory are counted on the real set.
    """
    async with (
        deployment(backend_set, folder / f"e2e-{apis}x{workers}", workers, apis=apis) as chatd,
        aiohttp.ClientSession() as session,
    ):
        client = Client(session, chatd.url)
        ab_pair = await reference_ab(client, chatd.url, ceiling, options, folder) if with_ab else None
        token = await _application_with_chats(client, "bench end to end", options.chats)
        probe = LagProbe(client, token, await client.create_chat(token), rate=options.probe_rate)
        watch = ProcessWatch(chatd.pids() | (servers() if backend_set == "real" else {}))
        async with watch.running():
            started = time.monotonic()
            probing = asyncio.create_task(probe.run(timeout_after_stop=options.drain_timeout_s))
            load = await _wrk(chatd.url, token, options, options.e2e_s, chatd)
            load_end = time.monotonic()
            rss_end_of_load = dict(watch.last)
            probe.stop()
            messages, found, done = await _drain(client, token, options)
            await probing
    if probe.poll_errors:
        logger.warning("the lag probe's search failed %d times (asked again each time)", probe.poll_errors)
    probes = len(probe.lags) + probe.not_found
    return ab_pair, EndToEnd(
        workers=workers,
        load=load,
        messages=messages + probes,
        searchable=found + len(probe.lags),
        all_searchable_s=None if done is None else done - started,
        load_s=load_end - started,
        lag_p50_s=probe.percentile(0.5),
        lag_p99_s=probe.percentile(0.99),
        probes=probes,
        probes_failed=probe.failed_posts + probe.not_found,
        rss_end_of_load=rss_end_of_load,
        rss_peak=watch.peak,
        cpu_s=watch.cpu,
    )


async def _drain(client: Client, token: str, options: Options) -> tuple[int, int, float | None]:
    """(messages numbered in the load's chats, how many are searchable, when all were: or None)."""
    # wrk drops its connections at the deadline; a request the api was still handling then gets its
    # number a moment later. Let those finish, then one message per chat marks the highest number.
    await asyncio.sleep(0.5)
    sentinels = {
        chat: await client.create_message(token, chat, f"{WORD} sentinel") for chat in range(1, options.chats + 1)
    }
    done, found = await wait_searchable(client, token, sentinels, WORD, options.drain_timeout_s)
    return sum(sentinels.values()), found, done
