"""make soak: a long run at half the measured capacity on the real set, with a fault every few minutes.

    python -m tests.faults.soak [--minutes 30] [--fault-every 3] [--out /tmp/chatd-soak]

Two api and two worker processes (tests/faults/test_faults.py's Cluster) on the shared real
servers, MariaDB and Elasticsearch reached through a private Toxiproxy so that partitions can be
injected. The api's capacity is measured first (wrk -c64, tests/faults/flood.py); the steady load
(tests/faults/load.py) then runs at half of it, and every ``--fault-every`` minutes one fault of
``FAULTS`` is injected and healed, in turn. Every ``SAMPLE_SECONDS`` the resident memory of each
chatd process is read from /proc and the lag measured: from a probe message's 201 to the first
GET that finds it stored. At the end: a table of the samples (and a PNG chart of RSS and lag when
matplotlib is installed), each process's RSS drift after the warm-up, and the verdict of every
acked number (lost, duplicated, double-numbered, answers 500, late). Exit status 0 only if the
verdict is clean and no process's RSS moved more than ±10% after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from bench.procstat import rss_mib
from tests.conftest import ELASTICSEARCH_URL, MYSQL_URL, Namespace
from tests.faults.flood import capacity
from tests.faults.load import LoadClient
from tests.faults.test_faults import (
    Cluster,
    converged,
    kill_api,
    kill_worker,
    restart_rabbitmq,
    sigterm_worker,
    wipe_redis,
)
from tests.faults.test_partitions import through
from tests.faults.toxiproxy import Toxiproxy
from tests.processes import application_and_chat
from tests.servers import running

SAMPLE_SECONDS = 10.0
DRIFT_LIMIT = 0.10


def partition(toxiproxy: Toxiproxy, proxy: str, seconds: float) -> Callable[[Cluster], Awaitable[None]]:
    async def fault(cluster: Cluster) -> None:
        async with toxiproxy.partitioned(proxy):
            await asyncio.sleep(seconds)

    return fault


def latency(toxiproxy: Toxiproxy, proxy: str, seconds: float) -> Callable[[Cluster], Awaitable[None]]:
    async def fault(cluster: Cluster) -> None:
        async with toxiproxy.latency(proxy, 300):
            await asyncio.sleep(seconds)

    return fault


async def probe_lag(api_url: str, token: str, chat: int, timeout: float = 60.0) -> float:
    """Seconds from a probe message's 201 to the first GET that finds it stored (-1: not within ``timeout``)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        try:
            path = f"{api_url}/applications/{token}/chats/{chat}/messages"
            async with session.post(path, json={"content": f"probe {uuid.uuid4().hex}"}) as response:
                if response.status != 201:
                    return -1.0
                number = (await response.json())["number"]
            acked = time.monotonic()
            while time.monotonic() - acked < timeout:
                async with session.get(f"{path}/{number}") as response:
                    if response.status == 200:
                        return time.monotonic() - acked
                await asyncio.sleep(0.05)
        except (aiohttp.ClientError, TimeoutError):
            pass
    return -1.0


class Samples:
    def __init__(self) -> None:
        self.rows: list[tuple[float, dict[str, float], float, str]] = []  # (t, rss by process slot, lag, event)
        self.pids: list[dict[str, int]] = []  # the process in each slot at each sample

    def add(self, elapsed: float, rss: dict[str, float], pids: dict[str, int], lag: float, event: str) -> None:
        self.rows.append((elapsed, rss, lag, event))
        self.pids.append(pids)
        cells = "  ".join(f"{name} {mib:6.1f}" for name, mib in rss.items())
        print(f"{elapsed / 60:6.1f} min  {cells}  lag {lag:6.2f} s  {event}", flush=True)

    def drift(self, warm_up: float) -> dict[str, float]:
        """Per process (slot and pid): (last - first) / first over its samples once it had run ``warm_up`` seconds.

        A fault restarts processes: a restarted one has a warm-up of its own, and one that did not
        live ``warm_up`` plus two samples is not judged.
        """
        series: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for (elapsed, rss, _, _), pids in zip(self.rows, self.pids, strict=True):
            for name, mib in rss.items():
                if mib > 0:
                    series.setdefault((name, pids.get(name, 0)), []).append((elapsed, mib))
        result: dict[str, float] = {}
        for (name, pid), points in series.items():
            born = points[0][0]
            warm = [mib for elapsed, mib in points if elapsed - born >= warm_up]
            if len(warm) >= 2:
                result[f"{name} (pid {pid})"] = (warm[-1] - warm[0]) / warm[0]
        return result

    def chart(self, path: Path) -> bool:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return False
        minutes = [row[0] / 60 for row in self.rows]
        figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
        for name in self.rows[0][1]:
            top.plot(minutes, [row[1].get(name, 0.0) for row in self.rows], label=name)
        top.set_ylabel("RSS (MiB)")
        top.legend(loc="upper left", fontsize="small")
        bottom.plot(minutes, [row[2] for row in self.rows], color="black")
        bottom.set_ylabel("lag, 201 to stored (s)")
        bottom.set_xlabel("minutes")
        for elapsed, _, _, event in self.rows:
            if event:
                for axis in (top, bottom):
                    axis.axvline(elapsed / 60, color="red", alpha=0.3)
        figure.tight_layout()
        figure.savefig(path)
        return True


async def soak(minutes: float, fault_every: float, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="chatd-soak-", dir=out))
    async with running(Toxiproxy(folder)) as toxiproxy:
        namespace = Namespace("real", folder)
        mariadb = await toxiproxy.create("mariadb", urlsplit(MYSQL_URL).port or 3306)
        search = await toxiproxy.create("elasticsearch", urlsplit(ELASTICSEARCH_URL).port or 9200)
        overrides = {
            "database_url": f"{through(MYSQL_URL, mariadb)}/{namespace.name}",
            "elasticsearch_url": through(ELASTICSEARCH_URL, search),
        }
        faults: list[tuple[str, Callable[[Cluster], Awaitable[None]]]] = [
            ("kill -9 worker", kill_worker),
            ("mariadb partitioned 12 s", partition(toxiproxy, "mariadb", 12)),
            ("kill -9 api", kill_api),
            ("elasticsearch partitioned 12 s", partition(toxiproxy, "elasticsearch", 12)),
            ("restart rabbitmq", restart_rabbitmq),
            ("mariadb 300 ms latency 10 s", latency(toxiproxy, "mariadb", 10)),
            ("restart redis, data wiped", wipe_redis),
            ("sigterm worker", sigterm_worker),
        ]
        cluster = Cluster(namespace, folder, **overrides)
        try:
            await cluster.start()
            api = cluster.api_urls[0]
            async with aiohttp.ClientSession() as session:
                bench_token, bench_chat = await application_and_chat(session, "soak capacity", api)
                token, chat = await application_and_chat(session, "soak", api)
                probe_token, probe_chat = await application_and_chat(session, "soak probes", api)
            measured = await capacity(api, bench_token, bench_chat, seconds=5.0)
            rate = measured / 2
            print(f"capacity of one api process: {measured:.0f} messages/s; soak load at {rate:.0f}/s", flush=True)
            chats = [chat]
            async with aiohttp.ClientSession() as session:
                for _ in range(2):
                    async with session.post(f"{api}/applications/{token}/chats") as response:
                        chats.append(int((await response.json())["number"]))
            load = LoadClient(cluster.api_urls, token, chats, concurrency=96, pause=0.0, rate=rate, max_sends=10**9)
            await load.start()
            samples = Samples()
            started = time.monotonic()
            next_fault = started + fault_every * 60
            faults_done = 0
            fault_task: asyncio.Task[None] | None = None
            while time.monotonic() - started < minutes * 60:
                event = ""
                if time.monotonic() >= next_fault and (fault_task is None or fault_task.done()):
                    name, fault = faults[faults_done % len(faults)]
                    fault_task = asyncio.create_task(fault(cluster))
                    faults_done += 1
                    next_fault += fault_every * 60
                    event = name
                # A killed api comes back on a new port: the clients follow it, as a load balancer would.
                load.api_urls = cluster.api_urls
                slots = {f"{p.role}-{i}": p for i, p in enumerate(cluster.processes)}
                rss = {name: rss_mib(p.process.pid) if p.process else 0.0 for name, p in slots.items()}
                pids = {name: p.process.pid if p.process else 0 for name, p in slots.items()}
                lag = await probe_lag(cluster.api_urls[-1], probe_token, probe_chat)
                samples.add(time.monotonic() - started, rss, pids, lag, event)
                await asyncio.sleep(max(0.0, SAMPLE_SECONDS - lag if lag > 0 else SAMPLE_SECONDS))
            if fault_task is not None:
                await fault_task
            result = await load.stop()
            achieved = len(result.acked_messages) / (time.monotonic() - started)
            verdict = await converged(namespace.name, cluster, token, result, timeout=300)
            drift = samples.drift(warm_up=min(180.0, minutes * 60 / 3))
            table = out / "soak-table.md"
            write_table(table, samples, measured, rate, achieved, verdict, drift, result.statuses)
            charted = samples.chart(out / "soak.png")
            print(table.read_text())
            print(f"chart: {out / 'soak.png'}" if charted else "chart: matplotlib is not installed, none drawn")
            flat = all(abs(d) <= DRIFT_LIMIT for d in drift.values())
            clean = not (verdict.lost or verdict.duplicated or verdict.double_numbered or verdict.answers_500)
            return 0 if clean and verdict.ok and flat else 1
        finally:
            cluster.stop()
            await namespace.cleanup()


def write_table(  # type: ignore[no-untyped-def]
    path: Path, samples: Samples, measured: float, rate: float, achieved: float, verdict, drift, statuses
) -> None:
    names = list(samples.rows[0][1]) if samples.rows else []
    lines = [
        f"Soak: capacity {measured:.0f} messages/s (one api, wrk -c64), load asked {rate:.0f}/s, "
        f"acked {achieved:.0f}/s; "
        f"{len(samples.rows)} samples every {SAMPLE_SECONDS:g} s.",
        "",
        "| minute | " + " | ".join(f"{n} RSS MiB" for n in names) + " | lag s (-1: probe not acked) | fault |",
        "|---|" + "---|" * len(names) + "---|---|",
    ]
    for elapsed, rss, lag, event in samples.rows:
        cells = " | ".join(f"{rss.get(n, 0.0):.1f}" for n in names)
        lines.append(f"| {elapsed / 60:.1f} | {cells} | {lag:.2f} | {event} |")
    lines += [
        "",
        "RSS drift after warm-up (last / first - 1): "
        + ", ".join(f"{n} {d:+.1%}" for n, d in drift.items())
        + " (each process from its own warm-up: a restarted one starts over)",
        f"Verdict: {verdict.line()}",
        f"Answers: {dict(statuses)}",
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--fault-every", type=float, default=3.0, help="minutes between faults")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "chatd-soak")
    args = parser.parse_args()
    return asyncio.run(soak(args.minutes, args.fault_every, args.out))


if __name__ == "__main__":
    sys.exit(main())
