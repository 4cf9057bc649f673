"""The ``chatd`` command: serve, migrate, reconcile, reindex, check, backup, restore."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from chatd import keys, logs, reindexing, sdnotify, tracing
from chatd.app import create_app
from chatd.backends.registry import make_backends, opened
from chatd.handlers.protocol import ChatdRunner
from chatd.live.unix_fanout import UnsafeSocketDirectory
from chatd.settings import ROLES, Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatd", description="Multi-tenant chat backend.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the API and/or run the background workers")
    serve.add_argument("--host", help="address to listen on (CHATD_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (CHATD_PORT, default 8080)")
    serve.add_argument("--role", choices=ROLES, help="what this process runs (CHATD_ROLE, default all)")
    commands.add_parser("migrate", help="apply pending schema migrations to the store")
    commands.add_parser("reconcile", help="recount every chats_count and messages_count from the stored rows")
    commands.add_parser("check", help="check that every configured backend answers")
    commands.add_parser(
        "reindex", help="rebuild the search index from the stored messages (after it lost data, or to rebuild it)"
    )
    backup = commands.add_parser(
        "backup", help="write a consistent backup of the store into DIR while chatd serves (chatd-backup-<time>/)"
    )
    backup.add_argument("dir", type=Path, help="the folder that keeps the backups")
    backup.add_argument("--keep", type=_positive, help="then delete all but the newest KEEP backups in DIR")
    backup.add_argument(
        "--metrics-file", type=Path, help="write the last success's time, duration and size here (node_exporter)"
    )
    restore = commands.add_parser(
        "restore",
        help="make a backup the store again (every chatd process stopped); numbers handed out since are never reused",
    )
    restore.add_argument("path", type=Path, help="a backup folder, or a folder of backups (the newest is restored)")
    restore.add_argument("--force", action="store_true", help="replace a store that holds data (kept aside)")
    promote = commands.add_parser(
        "promote",
        help="make a promoted MariaDB replica safe to serve (every worker stopped): no number is handed out twice",
    )
    for fencing in (restore, promote):
        fencing.add_argument(
            "--min-skip",
            type=_positive,
            default=None,
            help="numbers every sequence skips past the highest it knows, at least (default 1000)",
        )
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    keep_files_private()
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"chatd: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    if args.command == "serve":
        overrides = {name: getattr(args, name) for name in ("host", "port", "role") if getattr(args, name)}
        settings = settings.replace(**overrides)
    logs.log_settings(settings, args.command)
    if args.command == "serve":
        return serve(settings)
    if args.command in ("backup", "restore", "promote"):
        return asyncio.run(backups_command(args, settings))
    return asyncio.run(_admin(args.command, settings))


def keep_files_private() -> None:
    """Files chatd creates are readable by its own user only: 0600 files, 0700 directories.

    The embedded SQLite files hold every application's token, and under the usual 022 umask
    (``make run``, a bare ``chatd serve``) they would be world-readable. This adds 077 to the
    process's umask, before anything opens a file; a stricter umask is kept as it is.
    """
    current = os.umask(0o077)
    os.umask(current | 0o077)


def serve(settings: Settings) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # uvloop is optional on platforms without it
        pass
    tracing.configure(settings.role)  # before create_app: it instruments aiohttp's Application
    app = create_app(settings)
    _tune_garbage_collector()
    try:
        asyncio.run(_serve(app, settings))
    except UnsafeSocketDirectory as exc:  # a configuration to fix, not a crash: no traceback
        print(f"chatd: {exc}", file=sys.stderr)
        return 2
    return 0


async def _serve(app: web.Application, settings: Settings) -> None:
    """What ``web.run_app`` does, with chatd's HTTP protocol (``ChatdRunner``).

    On SIGTERM/SIGINT: stop accepting, finish in-flight requests within the grace period,
    then run the cleanup contexts (which drain the background loops). Under systemd
    (``Type=notify``) it says READY=1 once the backends answer, pings the watchdog, and says
    STOPPING=1 as the drain starts (``chatd.sdnotify``).
    """
    # keepalive_timeout as run_app sets it: aiohttp's own default keeps an idle connection an hour.
    runner = ChatdRunner(
        app, access_log=None, keepalive_timeout=75.0, shutdown_timeout=settings.shutdown_timeout_seconds
    )
    notifier = sdnotify.Notifier.from_env()
    try:
        await runner.setup()
    except BaseException:
        # A context that failed to start (a refused directory) leaves those before it open:
        # close them in reverse, as a shutdown would, instead of at garbage collection.
        await runner.cleanup()
        raise
    # The watchdog pings on through the drain (a loop that stalls there is stuck too).
    watchdog = asyncio.create_task(sdnotify.watchdog(notifier))
    readiness: asyncio.Task[None] | None = None
    try:
        await web.TCPSite(runner, settings.host, settings.port, reuse_port=settings.reuse_port or None).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        readiness = asyncio.create_task(sdnotify.ready_when_backends_answer(notifier, app[keys.BACKENDS].all()))
        await stop.wait()
        notifier.notify("STOPPING=1", "STATUS=draining")
    finally:
        helpers = [watchdog] if readiness is None else [watchdog, readiness]
        if readiness is not None:
            readiness.cancel()  # never a READY=1 after STOPPING=1
        await runner.cleanup()
        watchdog.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        notifier.close()


async def backups_command(args: argparse.Namespace, settings: Settings) -> int:
    """``chatd backup``, ``restore`` and ``promote``: 0 done, 2 refused (nothing changed), 1 failed."""
    from chatd.backups import fence, promoting, restoring, taking
    from chatd.backups.manifest import BackupRefused

    min_skip = getattr(args, "min_skip", None) or fence.MIN_SKIP
    try:
        if args.command == "promote":
            promoted = await promoting.promote(settings, min_skip=min_skip)
            seen = promoted.survivors
            print(
                f"promoted: newest row {promoted.newest_row_at or 'none'}, {promoted.lag_allowed_seconds:.1f} s ago;"
                f" replayed {seen.jobs:,} queued jobs ({seen.replayed:,} messages the store lacked);"
                f" recovered {seen.recovered:,} messages from the search index;"
                f" every sequence moved {promoted.skips[0]:,} to {promoted.skips[1]:,} past the highest number known"
                f" in {promoted.seconds:.1f} s"
            )
            return 0
        if args.command == "backup":
            report = await taking.take_backup(settings, args.dir, args.keep, args.metrics_file)
            counts = report.manifest.counts
            print(
                f"backup {report.folder}: {counts['applications']:,} applications, {counts['chats']:,} chats,"
                f" {counts['messages']:,} messages; {report.size:,} bytes in {report.seconds:.1f} s"
                + (f"; pruned {len(report.pruned)}" if report.pruned else "")
            )
            return 0
        done = await restoring.restore(settings, args.path, force=args.force, min_skip=min_skip)
    except BackupRefused as exc:
        print(f"chatd {args.command}: refused: {exc}", file=sys.stderr)
        return 2
    found, counts = done.survivors, done.manifest.counts
    print(
        f"restored {done.folder} (taken {done.manifest.taken_at:%Y-%m-%d %H:%M:%S} UTC):"
        f" {counts['applications']:,} applications, {counts['chats']:,} chats, {counts['messages']:,} messages;"
        f" replayed {found.jobs:,} queued jobs ({found.replayed:,} messages the backup lacked);"
        f" recovered {found.recovered:,} messages from the search index;"
        f" {found.orphaned:,} messages of applications the backup lacks left out;"
        f" every sequence moved {done.skips[0]:,} to {done.skips[1]:,} past the highest number known;"
        f" reindexed {done.reindexed:,} messages in {sum(done.seconds.values()):.1f} s"
        + (f"; the replaced store is kept as {done.replaced}" if done.replaced else "")
    )
    return 0


def _tune_garbage_collector() -> None:
    """Fewer, cheaper collections: a request makes many short-lived objects and few cycles.

    The objects made at start-up (modules, settings, routes) are moved out of the collector's
    view, so the collections that do run do not walk them again; the first generation holds
    more objects before it is collected, so a busy process pauses less often.
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(50_000, middle, oldest)


async def _admin(command: str, settings: Settings) -> int:
    backends = make_backends(settings)
    async with opened(backends):
        if command == "migrate":
            applied = await backends.store.migrate()
            print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
        elif command == "reconcile":
            await backends.store.recount_all()
            print("counts recomputed from the stored rows")
        elif command == "reindex":
            progress = reindexing.Progress(total=await backends.store.count_messages())
            report = await reindexing.rebuild(backends.store, backends.search, progress)
            print(f"indexed {report.messages:,} messages in {report.seconds:.1f} s ({report.per_second:,.0f}/s)")
        elif command == "check":
            failed = 0
            for backend in backends.all():
                try:
                    await asyncio.wait_for(backend.ping(), 5)
                    print(f"{backend.name}: ok")
                except Exception as exc:
                    failed += 1
                    print(f"{backend.name}: {type(exc).__name__}: {exc}")
            return 1 if failed else 0
    return 0
