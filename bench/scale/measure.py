"""One corpus size on one backend set: load, reindex, measure every read, tear down.

Reads are measured with wrk (bench/scale/paths.lua) against one ``chatd serve --role api``
process, with an idle ``--role worker`` beside it as a deployment has (its memory is reported
too). Each kind gets a short warm-up, then a timed run; latencies are wrk's, from the client.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.loadgen import wrk_json
from bench.procstat import rss_mib
from bench.scale import queries
from bench.scale.corpus import Corpus, Shape
from bench.scale.load import load_mysql, load_sqlite
from chatd.domain import MessageJob
from chatd.ports import Backends
from tests.conftest import ELASTICSEARCH_URL, Namespace, mysql_connection
from tests.processes import ChatdProcess, settings_env

LUA_SCRIPT = Path(__file__).with_name("paths.lua")


@dataclass
class Latency:
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int


@dataclass
class SizeResult:
    backend_set: str
    messages: int
    load_s: float = 0.0
    reindex_s: float = 0.0
    reindex_per_s: float = 0.0
    reads: dict[str, Latency] = field(default_factory=dict)
    contention: dict[str, Any] = field(default_factory=dict)
    rss_mib: dict[str, float] = field(default_factory=dict)
    disk_mib: dict[str, float] = field(default_factory=dict)
    reconcile: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


async def wrk(base_url: str, paths: list[str], seconds: float, connections: int) -> Latency:
    """GET ``paths`` in turn for ``seconds`` (bench/scale/paths.lua reads them from a file)."""
    with tempfile.NamedTemporaryFile("w", suffix=".paths", delete=False) as file:
        file.write("\n".join(paths) + "\n")
    try:
        data = await wrk_json(LUA_SCRIPT, base_url, [file.name], seconds=seconds, connections=connections)
    finally:
        os.unlink(file.name)
    return Latency(
        requests_per_s=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=data["p50_us"] / 1000,
        p95_ms=data["p95_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=data["status_errors"] + data["socket_errors"],
    )


async def run_size(backend_set: str, size: int, folder: Path, seconds: float, connections: int) -> SizeResult:
    result = SizeResult(backend_set, size)
    folder.mkdir(parents=True, exist_ok=True)
    space = Namespace(backend_set, folder)
    space.name = "chatd_scale_" + uuid.uuid4().hex[:8]
    processes: list[ChatdProcess] = []
    try:
        backends = await space.open_backends()
        settings = await space.settings()
        corpus = Corpus(Shape.of(size))
        queries.watch(corpus)
        say(f"{backend_set} {size:,}: loading")
        if backend_set == "embedded":
            assert settings.database_url is not None
            result.load_s = await asyncio.to_thread(
                load_sqlite, settings.database_url.removeprefix("sqlite:///"), corpus
            )
        else:
            async with mysql_connection(space.name) as conn:
                await conn.autocommit(False)
                result.load_s = await load_mysql(conn, corpus)
        say(f"{backend_set} {size:,}: loaded in {result.load_s:.1f} s; reindexing")
        result.reindex_s, indexed = await reindex(settings_env(settings), folder)
        result.reindex_per_s = indexed / result.reindex_s
        say(
            f"{backend_set} {size:,}: reindexed {indexed:,} in {result.reindex_s:.1f} s ({result.reindex_per_s:,.0f}/s)"
        )
        result.reconcile = await reconcile_timings(backends, corpus)
        processes = [ChatdProcess(settings, "api", folder), ChatdProcess(settings, "worker", folder)]
        for process in processes:
            await process.start(timeout=120)
        base_url = processes[0].url
        kinds = queries.kinds(corpus)
        for kind in kinds:
            await wrk(base_url, kind.paths, 1, connections)  # warm-up: caches, connections
            result.reads[kind.name] = await wrk(base_url, kind.paths, seconds, connections)
            say(f"  {kind.name:<40} {fmt(result.reads[kind.name])}")
        result.contention = await contention(base_url, kinds, result.reads, seconds)
        for process in processes:
            assert process.process is not None
            result.rss_mib[process.role] = round(rss_mib(process.process.pid), 1)
        result.disk_mib = await disk_sizes(backend_set, settings, space.name)
    finally:
        for process in processes:
            process.stop_quietly()
        await space.cleanup()
    return result


async def reindex(env: dict[str, str], folder: Path) -> tuple[float, int]:
    """``chatd reindex`` as an operator runs it; (seconds, messages indexed)."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatd", "reindex", env=env, cwd=folder,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    seconds = time.monotonic() - started
    match = re.search(r"indexed ([\d,]+) messages", stdout.decode())
    if process.returncode != 0 or match is None:
        raise RuntimeError(f"chatd reindex failed ({process.returncode}): {stdout.decode()} {stderr.decode()[-3000:]}")
    return seconds, int(match.group(1).replace(",", ""))


async def reconcile_timings(backends: Backends, corpus: Corpus) -> dict[str, float]:
    """A full recount (``chatd reconcile``), and the periodic fold with nothing and with 1,000 changes pending."""
    started = time.monotonic()
    await backends.store.recount_all()
    timings = {"recount_all_s": round(time.monotonic() - started, 3)}
    started = time.monotonic()
    await backends.store.reconcile_counts()
    timings["fold_nothing_pending_ms"] = round((time.monotonic() - started) * 1000, 2)
    # 1,000 new messages in 100 chats that no query reads, stored as a worker stores them.
    chats = [c for c in corpus.chats[len(queries.SMALL_CHATS) + 1 :] if c.messages][:100]
    jobs = [
        MessageJob(chat.application_id, chat.number, chat.messages + i, "late arrival", datetime.now(UTC))
        for chat in chats
        for i in range(1, 11)
    ]
    await backends.store.save_messages(jobs)
    started = time.monotonic()
    await backends.store.reconcile_counts()
    timings["fold_1000_pending_ms"] = round((time.monotonic() - started) * 1000, 2)
    return timings


async def contention(
    base_url: str, kinds: list[queries.Kind], quiet: dict[str, Latency], seconds: float
) -> dict[str, Any]:
    """Another tenant's small-chat search, alone and while 4 clients run the heaviest search."""
    heavy = max((k for k in kinds if "(hot chat)" in k.name), key=lambda k: quiet[k.name].p95_ms)
    probe = next(k for k in kinds if k.name == "search: rare word (small chat)")
    alone = await wrk(base_url, probe.paths, seconds, 1)
    loaded, _ = await asyncio.gather(wrk(base_url, probe.paths, seconds, 1), wrk(base_url, heavy.paths, seconds, 4))
    say(
        f"  contention: {probe.name} alone p95 {alone.p95_ms:.1f} ms,"
        f" beside 4x '{heavy.name}' p95 {loaded.p95_ms:.1f} ms"
    )
    return {"heavy": heavy.name, "probe": probe.name, "alone": asdict(alone), "loaded": asdict(loaded)}


async def disk_sizes(backend_set: str, settings: Any, name: str) -> dict[str, float]:
    mib = 1024 * 1024
    if backend_set == "embedded":
        store = Path(settings.database_url.removeprefix("sqlite:///"))
        index = Path(settings.search_path)
        size = lambda path: sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))  # noqa: E731
        return {"store": round(size(store) / mib, 1), "index": round(size(index) / mib, 1)}
    async with mysql_connection(name) as conn, conn.cursor() as cursor:
        for table in ("applications", "chats", "messages"):
            await cursor.execute(f"ANALYZE TABLE {table}")
            await cursor.fetchall()
        await cursor.execute(
            "SELECT SUM(data_length + index_length) FROM information_schema.tables WHERE table_schema = %s", (name,)
        )
        (store,) = await cursor.fetchone()
    index_name = settings.elasticsearch_index
    async with aiohttp.ClientSession() as session:
        await session.post(f"{ELASTICSEARCH_URL}/{index_name}/_flush")
        async with session.get(f"{ELASTICSEARCH_URL}/{index_name}/_stats/store") as response:
            stats = await response.json()
    index = stats["_all"]["primaries"]["store"]["size_in_bytes"]
    return {"store": round(float(store) / mib, 1), "index": round(index / mib, 1)}


def fmt(latency: Latency) -> str:
    return (
        f"p50 {latency.p50_ms:7.2f}  p95 {latency.p95_ms:7.2f}  p99 {latency.p99_ms:7.2f} ms"
        f"  {latency.requests_per_s:8.0f}/s" + (f"  ERRORS {latency.errors}" if latency.errors else "")
    )


def say(text: str) -> None:
    print(text, flush=True)
