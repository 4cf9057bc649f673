"""What a backup and a restore cost at a million messages, on both backend sets (``make bench-backup``).

For each set: the bench-scale corpus (``bench/scale/corpus.py``: 1,000 applications, 10,000
chats, one hot chat of 200,000 messages at 1M) is bulk-loaded into a fresh namespace; then, as
an operator runs them, ``chatd backup DIR`` and, once the store is lost (the SQLite files
deleted, the MySQL database dropped), ``chatd restore DIR`` into a new one, which includes the
reindex. On the real set the restore is then run a second time with the search index it built
still there (the store's disk alone lost): that restore also walks the whole surviving index
(``survivors.recover_from_index``). Writes bench/backup-results.md and .json, and the README's
"Backups" table between its markers.

    python -m bench.backup [--sets embedded,real] [--size 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.scale.corpus import Corpus, Shape
from bench.scale.load import load_mysql, load_sqlite
from tests.conftest import Namespace, drop_mysql_database, mysql_connection
from tests.processes import settings_env

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START, END = "<!-- bench-backup:start -->", "<!-- bench-backup:end -->"


@dataclass
class Restore:
    seconds: float
    stages: dict[str, float]
    summary: str


@dataclass
class SetResult:
    backend_set: str
    size: int
    load_s: float = 0.0
    store_mib: float = 0.0
    backup_s: float = 0.0
    backup_mib: float = 0.0
    restores: dict[str, Restore] = field(default_factory=dict)


async def chatd(env: dict[str, str], cwd: Path, *args: str) -> tuple[float, str, str]:
    """Run ``chatd ARGS`` as an operator does; (seconds, stdout, stderr). Raises if it fails."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatd", *args, env=env, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    seconds = time.monotonic() - started
    if process.returncode != 0:
        what = f"chatd {' '.join(args)} failed ({process.returncode})"
        raise RuntimeError(f"{what}: {out.decode()} {err.decode()[-3000:]}")
    return seconds, out.decode(), err.decode()


def stages(stderr: str) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(r"restore: (.+?): done in ([\d.]+) s", stderr)}


async def run_set(backend_set: str, size: int, folder: Path) -> SetResult:
    result = SetResult(backend_set, size)
    folder.mkdir(parents=True, exist_ok=True)
    space = Namespace(backend_set, folder)
    space.name = "chatd_backup_" + uuid.uuid4().hex[:8]
    backups = folder / "backups"
    try:
        await space.open_backends()
        settings = await space.settings()
        env = settings_env(settings)
        corpus = Corpus(Shape.of(size))
        say(f"{backend_set} {size:,}: loading")
        if backend_set == "embedded":
            store = Path(settings.database_url.removeprefix("sqlite:///"))
            result.load_s = await asyncio.to_thread(load_sqlite, str(store), corpus)
        else:
            async with mysql_connection(space.name) as conn:
                await conn.autocommit(False)
                result.load_s = await load_mysql(conn, corpus)
        await space._opened.aclose()  # the store is the operator's now: nothing of ours holds it open
        result.store_mib = await store_size(backend_set, settings, space.name)
        say(f"{backend_set}: loaded in {result.load_s:.1f} s, store {result.store_mib:,.0f} MiB; backing up")
        result.backup_s, out, _ = await chatd(env, folder, "backup", str(backups))
        result.backup_mib = sum(p.stat().st_size for p in backups.rglob("*") if p.is_file()) / 2**20
        say(f"{backend_set}: {out.strip()}")
        scenarios = ["store lost, empty index"] + (["store lost, index survived"] if backend_set == "real" else [])
        for scenario in scenarios:
            await lose_store(space, settings)
            seconds, out, err = await chatd(env, folder, "restore", str(backups))
            result.restores[scenario] = Restore(seconds, stages(err), out.strip())
            say(f"{backend_set} ({scenario}): restored in {seconds:.1f} s: {stages(err)}")
            await check_restored(space, size)
    finally:
        await space.cleanup()
        shutil.rmtree(backups, ignore_errors=True)
    return result


async def lose_store(space: Namespace, settings: Any) -> None:
    if space.backend_set == "real":
        await drop_mysql_database(space.name)
        return
    for path in space.folder.glob("chatd.db*"):
        path.unlink()
    for path in space.folder.glob("search.db*"):  # the embedded index was on the same disk
        path.unlink()


async def check_restored(space: Namespace, size: int) -> None:
    backends = await space.open_backends()
    stored = await backends.store.count_messages()
    if stored != size:
        raise AssertionError(f"restored {stored:,} messages, not {size:,}")
    await space._opened.aclose()


async def store_size(backend_set: str, settings: Any, name: str) -> float:
    if backend_set == "embedded":
        store = Path(settings.database_url.removeprefix("sqlite:///"))
        return sum(p.stat().st_size for p in store.parent.glob(store.name + "*")) / 2**20
    async with mysql_connection(name) as conn, conn.cursor() as cursor:
        await cursor.execute(
            "SELECT SUM(data_length + index_length) FROM information_schema.tables WHERE table_schema = %s", (name,)
        )
        return float((await cursor.fetchone())[0]) / 2**20


def render(results: list[SetResult]) -> str:
    load = os.getloadavg()[0]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Measured {when} on 2 cores (AMD EPYC), Debian 12, every server on the same machine; load average"
        f" {load:.2f} at the end. `make bench-backup`: the bench-scale corpus, `chatd backup` and `chatd restore`"
        " run as commands.",
        "",
        "| set, messages | store | backup: time / size | restore | of which: put back / replay + recover /"
        " sequences / recount / reindex |",
        "|---|---:|---:|---|---|",
    ]
    for r in results:
        for scenario, restore in r.restores.items():
            s = restore.stages
            recover = s.get("replay queued jobs", 0) + s.get("recover from the search index", 0)
            lines.append(
                f"| {r.backend_set}, {r.size:,} | {r.store_mib:,.0f} MiB | {r.backup_s:.1f} s / {r.backup_mib:,.0f} MiB"
                f" | {restore.seconds:.1f} s ({scenario}) | {s.get('put back', 0):.1f} / {recover:.1f} /"
                f" {s.get('move sequences', 0):.1f} / {s.get('clear the cache and recount', 0):.1f} /"
                f" {s.get('reindex', 0):.1f} s |"
            )
    return "\n".join(lines)


def say(text: str) -> None:
    print(f"[bench-backup {datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.backup")
    parser.add_argument("--sets", default="embedded,real")
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args(argv)
    results = []
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"chatd-bench-backup-{uuid.uuid4().hex[:6]}"
    try:
        for backend_set in args.sets.split(","):
            results.append(await run_set(backend_set, args.size, root / backend_set))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    block = render(results)
    stem = ROOT / "bench" / "backup-results"
    Path(f"{stem}.md").write_text(block + "\n")
    Path(f"{stem}.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    if not args.no_readme:
        text = README.read_text()
        if START in text and END in text:
            head, rest = text.split(START, 1)
            README.write_text(f"{head}{START}\n{block}\n{END}{rest.split(END, 1)[1]}")
    print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
