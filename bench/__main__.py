"""Measure chatd end to end: `python -m bench [--messages N] [--concurrency C] [--sets embedded,real]`.

For each backend set it starts one api and one worker process (`chatd serve`), creates
messages from C concurrent clients, and reports request throughput, latency percentiles,
the time until every message is searchable, and search latency. Figures on a shared
machine vary from run to run; the ratios between sets measured in one run are the useful part.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

from chatd.backends.registry import close_all, make_backends, open_all
from tests.conftest import create_mysql_database, drop_mysql_database, embedded_settings, real_settings
from tests.processes import ChatdProcess


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def timed(session: aiohttp.ClientSession, method: str, url: str, **kwargs: object) -> float:
    started = time.perf_counter()
    async with session.request(method, url, **kwargs) as response:  # type: ignore[arg-type]
        await response.read()
        if response.status >= 400:
            raise RuntimeError(f"{method} {url}: {response.status}")
    return time.perf_counter() - started


async def load(api: str, messages: int, concurrency: int) -> dict[str, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async with session.post(f"{api}/applications", json={"application": {"name": "bench"}}) as response:
            token = (await response.json())["token"]
        chats = 10
        for _ in range(chats):
            await timed(session, "POST", f"{api}/applications/{token}/chats")
        latencies: list[float] = []
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(messages):
            queue.put_nowait(index)

        async def client() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                url = f"{api}/applications/{token}/chats/{index % chats + 1}/messages"
                latencies.append(await timed(session, "POST", url, json={"content": f"benchmark message {index}"}))

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started

        async def searchable() -> bool:
            for chat in range(1, chats + 1):
                async with session.get(
                    f"{api}/applications/{token}/chats/{chat}/messages/search",
                    params={"query": "benchmark", "per_page": "1"},
                ) as response:
                    if (await response.json()).get("total") != messages // chats:
                        return False
            return True

        while not await searchable():
            if time.perf_counter() - started > 600:
                raise TimeoutError("messages did not become searchable in 600 s")
            await asyncio.sleep(0.1)
        all_searchable = time.perf_counter() - started
        searches = [
            await timed(
                session, "GET", f"{api}/applications/{token}/chats/{n % chats + 1}/messages/search", params={"query": q}
            )
            for n, q in enumerate(["bench", "mesage", "benchmark 42"] * 30)
        ]
    return {
        "req_per_s": messages / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p95_ms": percentile(latencies, 0.95) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "all_searchable_s": all_searchable,
        "search_p50_ms": statistics.median(searches) * 1000,
        "search_p95_ms": percentile(searches, 0.95) * 1000,
    }


async def run_set(name: str, messages: int, concurrency: int, folder: Path) -> dict[str, float]:
    database = "chatd_bench_" + uuid.uuid4().hex[:8]
    if name == "real":
        await create_mysql_database(database)
        settings = real_settings(database)
        backends = make_backends(settings)
        await open_all(backends)
        await backends.store.migrate()
    else:
        settings = embedded_settings(folder)
    processes = [ChatdProcess(settings, "api", folder), ChatdProcess(settings, "worker", folder)]
    try:
        for process in processes:
            await process.start()
        return await load(processes[0].url, messages, concurrency)
    finally:
        for process in processes:
            process.stop_quietly()
        if name == "real":
            for backend in backends.all():
                if hasattr(backend, "destroy") and backend is not backends.store:
                    await backend.destroy()
            await close_all(backends)
            await drop_mysql_database(database)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--sets", default="embedded,real")
    args = parser.parse_args()
    results = {}
    for name in args.sets.split(","):
        with tempfile.TemporaryDirectory() as folder:
            results[name] = await run_set(name, args.messages, args.concurrency, Path(folder))
        print(f"{name:9s} " + "  ".join(f"{key} {value:.1f}" for key, value in results[name].items()), flush=True)
    if {"embedded", "real"} <= results.keys():
        ratios = {key: results["real"][key] / results["embedded"][key] for key in results["real"]}
        print("real/embedded " + "  ".join(f"{key} {value:.2f}x" for key, value in ratios.items()))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
