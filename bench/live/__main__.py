"""`make bench-live`: live events at scale, on both backend sets.

    python -m bench.live [--sets embedded,real] [--subscribers 10000] [--rate 1000] [--quick]

For each backend set, one ``chatd serve --role api`` process and one worker on a fresh namespace
(bench/deploy.py), and:

(a) Subscribers: ``--subscribers`` SSE streams (10,000) over ``--chats`` chats (100), held by
    ``--clients`` load-client processes (bench/live/subscribers.py; Python, see there why), all on
    the one api process. Memory per idle subscriber: the api's RSS once all are connected and idle,
    less its RSS before, divided by their number.
(b) Delivery: ``--per-chat`` messages (5) posted to every one of those chats; every stream must
    receive every message of its chat, once, in order (streams complete / all).
(c) Latency, with those subscribers still connected: ``--rate`` messages/s (1,000) for
    ``--seconds`` (20) over ``--load-chats`` other chats (20), one subscriber each, in this
    process; per message, from its POST's 201 to its event at the subscriber (one clock).

The fd limit is raised for the processes the bench starts (``ulimit -n``: 10,000 streams need
10,000 sockets on each side). Writes bench/results-live.md and, for a full run of both sets,
replaces the README's `bench:live` tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.deploy import Deployment, deployment, pid_of
from bench.procstat import rss_mib

logger = logging.getLogger("bench.live")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SET_NAMES = {"embedded": "embedded (SQLite)", "real": "real (MariaDB, Redis, RabbitMQ, ES)"}
FD_LIMIT = 65536


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="embedded,real")
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--chats", type=int, default=100)
    parser.add_argument("--clients", type=int, default=2, help="load-client processes holding the streams")
    parser.add_argument("--per-chat", type=int, default=5)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--load-chats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="1,000 subscribers, 5 s of latency load")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    args.sets = args.sets.split(",")
    if args.quick:
        args.subscribers, args.seconds = min(args.subscribers, 1000), min(args.seconds, 5.0)
    if args.output is None:
        args.output = HERE.parent / ("results-live-quick.md" if args.quick else "results-live.md")
    return args


async def post(session: aiohttp.ClientSession, path: str, content: str) -> int:
    async with session.post(path, json={"content": content}) as response:
        if response.status != 201:
            raise RuntimeError(f"POST {path}: {response.status} {await response.text()}")
        return int((await response.json())["number"])


async def prepare(session: aiohttp.ClientSession, chats: int) -> str:
    async with session.post("/applications", json={"application": {"name": "bench live"}}) as response:
        token = str((await response.json())["token"])
    for _ in range(chats):
        async with session.post(f"/applications/{token}/chats") as response:
            assert response.status == 201
    return token


class Clients:
    """The load-client processes holding the idle subscribers."""

    def __init__(self, url: str, token: str, args: argparse.Namespace):
        chats = ",".join(str(n) for n in range(1, args.chats + 1))
        share = args.subscribers // args.clients
        self.processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.live.subscribers",
                    "--url",
                    url,
                    "--token",
                    token,
                    "--chats",
                    chats,
                    "--count",
                    str(share),
                    "--expect",
                    str(args.per_chat),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=ROOT,
            )
            for _ in range(args.clients)
        ]

    async def line(self, key: str, timeout: float = 300.0) -> list[dict[str, Any]]:
        """The next JSON line with ``key`` from every client."""

        def read(process: subprocess.Popen[bytes]) -> dict[str, Any]:
            assert process.stdout is not None
            while True:
                raw = process.stdout.readline()
                if not raw:
                    raise RuntimeError(f"a load client exited ({process.poll()})")
                data: dict[str, Any] = json.loads(raw)
                if key in data:
                    return data

        async with asyncio.timeout(timeout):
            return list(await asyncio.gather(*(asyncio.to_thread(read, p) for p in self.processes)))

    def stop(self) -> None:
        for process in self.processes:
            if process.stdin is not None:
                process.stdin.close()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


async def idle_rss(pid: int, seconds: float = 3.0) -> float:
    """RSS once it stops moving (the lowest of a few samples)."""
    samples = []
    for _ in range(int(seconds / 0.5)):
        samples.append(rss_mib(pid))
        await asyncio.sleep(0.5)
    return min(samples)


async def latency(
    session: aiohttp.ClientSession, token: str, first_chat: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Post at ``args.rate`` over the load chats; per message, 201 -> event at its subscriber."""
    chats = list(range(first_chat, first_chat + args.load_chats))
    answered: dict[tuple[int, int], float] = {}
    seen: dict[tuple[int, int], float] = {}
    duplicates = 0

    async def subscribe(chat: int, ready: asyncio.Event) -> None:
        nonlocal duplicates
        path = f"/applications/{token}/chats/{chat}/events?after=0"
        async with session.get(path, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as response:
            ready.set()
            async for line in response.content:
                if line.startswith(b"data: "):
                    key = (chat, json.loads(line[6:])["number"])
                    duplicates += key in seen
                    seen.setdefault(key, time.monotonic())

    readies = [asyncio.Event() for _ in chats]
    readers = [asyncio.create_task(subscribe(chat, ready)) for chat, ready in zip(chats, readies, strict=True)]
    for ready in readies:
        await ready.wait()
    in_flight = asyncio.Semaphore(256)
    errors = 0

    async def one(index: int) -> None:
        nonlocal errors
        chat = chats[index % len(chats)]
        async with in_flight:
            try:
                number = await post(session, f"/applications/{token}/chats/{chat}/messages", f"live bench {index}")
                answered[(chat, number)] = time.monotonic()
            except Exception:
                errors += 1

    total = int(args.rate * args.seconds)
    started = time.monotonic()
    posts = []
    for index in range(total):
        delay = started + index / args.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        posts.append(asyncio.create_task(one(index)))
    await asyncio.gather(*posts)
    load_seconds = time.monotonic() - started
    deadline = time.monotonic() + 60
    # Polled: the condition spans both tables, and the last events are at most a second away.
    while time.monotonic() < deadline and not set(answered) <= set(seen):  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    for reader in readers:
        reader.cancel()
    lags = sorted((seen[key] - at) * 1000 for key, at in answered.items() if key in seen)
    missing = sum(1 for key in answered if key not in seen)

    def pct(p: float) -> float:
        return lags[min(len(lags) - 1, int(p / 100 * len(lags)))] if lags else float("nan")

    return {
        "posted": total, "answered": len(answered), "post_errors": errors, "rate": len(answered) / load_seconds,
        "missing": missing, "duplicates": duplicates, "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99),
        "max_ms": lags[-1] if lags else float("nan"),
    }  # fmt: skip


async def measure(backend_set: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    async with deployment(backend_set, folder, workers=1) as system:
        return await measure_on(system, args)


async def measure_on(system: Deployment, args: argparse.Namespace) -> dict[str, Any]:
    api_pid = pid_of(system.api)
    result: dict[str, Any] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(system.url, connector=connector) as session:
        token = await prepare(session, args.chats + args.load_chats)
        before = await idle_rss(api_pid)
        clients = Clients(system.url, token, args)
        try:
            started = time.monotonic()
            connected = await clients.line("connected")
            result["connect_s"] = time.monotonic() - started
            result["connected"] = sum(c["connected"] for c in connected)
            after = await idle_rss(api_pid)
            result.update(rss_before_mib=before, rss_idle_mib=after)
            result["kib_per_subscriber"] = (after - before) * 1024 / max(1, result["connected"])
            system.check_alive()
            started = time.monotonic()
            sent = asyncio.Semaphore(32)

            async def send(chat: int, index: int) -> None:
                async with sent:
                    await post(session, f"/applications/{token}/chats/{chat}/messages", f"to everyone {index}")

            await asyncio.gather(
                *(send(chat, i) for i in range(args.per_chat) for chat in range(1, args.chats + 1))
            )  # fmt: skip
            done = await clients.line("done")
            result["delivery_s"] = time.monotonic() - started
            result["complete"] = sum(d["complete"] for d in done)
            result["streams"] = sum(d["streams"] for d in done)
            result["events"] = sum(d["received"] for d in done)
            result["out_of_order"] = sum(d["out_of_order"] for d in done)
            result["latency"] = await latency(session, token, args.chats + 1, args)
            result["rss_end_mib"] = rss_mib(api_pid)
            system.check_alive()
        finally:
            clients.stop()
    return result


def machine() -> str:
    cpus = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
    memory = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal"))) / 1024**2
    load = open("/proc/loadavg").read().split()[0]
    cpu = cpus[0] if cpus else "?"
    return f"{len(cpus)} x {cpu}, {memory:.1f} GiB, Linux {platform.release()}; load average {load} at the start"


def render(results: dict[str, dict[str, Any]], args: argparse.Namespace, header: str) -> str:
    rows = [
        "| backends | subscribers connected | connect time | api RSS before / idle | per idle subscriber "
        "| streams with every message, in order | events | delivered in |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        rows.append(
            f"| {SET_NAMES[name]} | {r['connected']:,} | {r['connect_s']:.1f} s | {r['rss_before_mib']:.0f} / "
            f"{r['rss_idle_mib']:.0f} MiB | {r['kib_per_subscriber']:.1f} KiB | {r['complete']:,} / {r['streams']:,} "
            f"| {r['events']:,} | {r['delivery_s']:.1f} s |"
        )
    rows += [
        "",
        f"Latency, 201 -> event: {args.rate:,.0f} messages/s for {args.seconds:.0f} s over {args.load_chats} chats "
        "with one subscriber each, the subscribers above still connected.",
        "",
        "| backends | answered | rate | p50 | p90 | p99 | max | missing | duplicated | api RSS at the end |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lat = r["latency"]
        rows.append(
            f"| {SET_NAMES[name]} | {lat['answered']:,} | {lat['rate']:,.0f}/s | {lat['p50_ms']:.0f} ms "
            f"| {lat['p90_ms']:.0f} ms | {lat['p99_ms']:.0f} ms | {lat['max_ms']:.0f} ms | {lat['missing']} "
            f"| {lat['duplicates']} | {r['rss_end_mib']:.0f} MiB |"
        )
    return header + "\n\n" + "\n".join(rows) + "\n"


def write_readme(text: str) -> None:
    readme = ROOT / "README.md"
    content = readme.read_text()
    start, end = "<!-- bench:live:start (written by make bench-live) -->", "<!-- bench:live:end -->"
    if start in content and end in content:
        before, rest = content.split(start, 1)
        readme.write_text(before + start + "\n" + text + rest[rest.index(end) :])


async def main_async(args: argparse.Namespace) -> int:
    results: dict[str, dict[str, Any]] = {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    header = (
        f"Measured with `python -m bench.live` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {machine()}; "
        f"chatd {commit.stdout.strip()}. The load clients, every chatd process and the servers share these cores."
    )
    with tempfile.TemporaryDirectory(prefix="chatd-bench-live-") as folder:
        for backend_set in args.sets:
            logger.info("%s: %d subscribers", backend_set, args.subscribers)
            results[backend_set] = await measure(backend_set, Path(folder) / backend_set, args)
            logger.info("%s: %s", backend_set, json.dumps(results[backend_set]))
    text = render(results, args, header)
    print(text)
    args.output.write_text(text)
    if not args.quick and args.sets == ["embedded", "real"]:
        write_readme(text)
    ok = all(r["complete"] == r["streams"] and not r["latency"]["missing"] for r in results.values())
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Children inherit it: the api process and the load clients each hold every stream's socket.
    # Raising the hard limit needs CAP_SYS_RESOURCE (not in every container): then the soft one
    # goes up to it, which must exceed --subscribers (20,000 here).
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(FD_LIMIT, hard), max(FD_LIMIT, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
