"""Where a restore moves every sequence, so that no number handed out before it is handed out again.

The old deployment went on numbering after the backup; whatever of that its store held is gone.
For each sequence (a chat's messages, an application's chats, the application ids) the restore
knows a highest value from three places: the backup's manifest (the counter, read after a MySQL
dump was complete), the restored store once the surviving jobs and index documents are replayed
into it, and those surviving jobs and documents themselves (also of applications the backup does
not have). Numbers handed out after the backup that none of them saw are unknown, so each
sequence also skips ahead of the highest known value: by ``min_skip`` at least, and by twice
what it handed out in the hour before the backup, per second, for every second since the backup.
A chat that took 3,600 numbers in that hour, restored a day after its backup, skips 172,800.

The skipped numbers are burnt (a chat's numbers then have a gap); none is ever handed out twice
while the deployment handed out fewer than that after the backup, or a surviving component knows them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from chatd.backups.manifest import PACE_WINDOW_SECONDS, Manifest
from chatd.numbering import SequenceState

# Skipped by every sequence at least: what a quiet chat may have taken since a recent backup.
MIN_SKIP = 1_000
# How much faster than its last hour a sequence is assumed to have gone on.
PACE_MARGIN = 2.0


def skip(taken_last_hour: int, elapsed_seconds: float, min_skip: int = MIN_SKIP) -> int:
    """How far past its highest known value a sequence moves."""
    pace = taken_last_hour / PACE_WINDOW_SECONDS
    return max(min_skip, math.ceil(PACE_MARGIN * pace * max(elapsed_seconds, 0.0)))


def floors(
    manifest: Manifest,
    restored: Mapping[str, SequenceState],
    survivors: Mapping[str, int],
    elapsed_seconds: float,
    min_skip: int = MIN_SKIP,
) -> dict[str, int]:
    """Each sequence's new floor: its highest known value plus its skip."""
    keys = {*manifest.sequences, *restored, *survivors}
    result: dict[str, int] = {}
    for key in sorted(keys):
        known = max(
            manifest.sequences[key].highest if key in manifest.sequences else 0,
            restored[key].highest if key in restored else 0,
            survivors.get(key, 0),
        )
        result[key] = known + skip(manifest.taken_last_hour.get(key, 0), elapsed_seconds, min_skip)
    return result
