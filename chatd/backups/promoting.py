"""``chatd promote``: a MariaDB/MySQL replica made the store, with every number kept a promise.

When the primary is lost, the operator promotes its replica (the runbook is in the README,
"Promoting the replica") and runs ``chatd promote`` against it, every chatd worker stopped.
Whatever the replica had not received when the primary died is gone from the store: numbers
handed out there (the counters' rows), and messages stored there. This command, in order:

1. refuses a server that is still read-only or still replicating (not promoted yet);
2. replays what outlived the primary into the store: queued jobs (indexed as they are stored,
   since the search index is kept), then documents of the search index the store lacks;
3. moves every sequence past the highest value anything knows, plus a skip for what the primary
   may have handed out beyond the replica that nothing saw (``fence``): the time from the
   newest row the replica holds to now, at twice the pace of the hour before it. The skipped
   message numbers are burnt (404); the skipped chat numbers are not: one of them may be a chat
   the primary acked and stored alone, which comes back with the first message sent to it;
4. empties the cache (it may hold chats the replica lacks) and recounts.

With semi-synchronous replication (the local cluster's setting), a committed transaction is on the
replica before its client hears of it, so step 2 finds nothing missing and step 3 is a margin; after
a fall-back to asynchronous replication (the replica was down or slow), they are what keeps the promise.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TextIO

from chatd.backends.registry import make_backends, opened
from chatd.backups import fence, survivors
from chatd.backups.manifest import PACE_WINDOW_SECONDS, BackupRefused
from chatd.backups.taking import utc_now
from chatd.settings import Settings


@dataclass
class PromoteReport:
    newest_row_at: datetime | None
    lag_allowed_seconds: float
    survivors: survivors.Survivors = field(default_factory=survivors.Survivors)
    skips: tuple[int, int] = (0, 0)
    seconds: float = 0.0


async def promote(
    settings: Settings,
    *,
    min_skip: int = fence.MIN_SKIP,
    out: TextIO | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> PromoteReport:
    """Make the promoted replica at ``settings.database_url`` safe to number from."""
    say = out if out is not None else sys.stderr
    if not settings.database_url.startswith("mysql://"):
        raise BackupRefused("chatd promote is for a MariaDB/MySQL store promoted from a replica")
    from chatd.backends.mysql_db import MysqlTarget
    from chatd.backups import mysql_engine

    target = MysqlTarget.parse(settings.database_url)
    role = await mysql_engine.replication_role(target)
    if role is not None:
        raise BackupRefused(f"{target.host}:{target.port} is not promoted yet: {role}")
    began = time.monotonic()
    backends = make_backends(settings)
    async with opened(backends):
        store = backends.store
        newest = await store.newest_row_at()
        now = clock()
        lag = max(0.0, (now - newest).total_seconds()) if newest else 0.0
        pace = await store.sequences_taken_since(newest - timedelta(seconds=PACE_WINDOW_SECONDS)) if newest else {}
        report = PromoteReport(newest, lag)
        found = report.survivors
        await survivors.replay_queued(store, backends.queue, found, search=backends.search)
        print(f"promote: replayed {found.jobs:,} queued jobs", file=say, flush=True)
        await survivors.recover_from_index(store, backends.search, found)
        print(f"promote: recovered {found.recovered:,} messages from the search index", file=say, flush=True)
        held = await store.sequences()
        floors = fence.floors_past((fence.highest(held), found.highest), pace, lag, min_skip)
        # Chat numbers are not burnt: a chat the lost primary acked, with no message yet in any
        # survivor, exists again once its client sends it a message (a burnt one would be 404).
        report.skips = await fence.move_past(store, floors, held, found.highest, burn_chats=False)
        await backends.cache.clear()
        await store.recount_all()
    report.seconds = time.monotonic() - began
    return report
