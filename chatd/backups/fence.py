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
from collections.abc import Iterable, Mapping

from chatd.backups.manifest import PACE_WINDOW_SECONDS, Manifest
from chatd.numbering import APPLICATION_IDS, SequenceState
from chatd.ports import Store

# An application's chat numbers: NumberScope(application_id).key.
CHATS_PREFIX = "chats:"
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
    """Each sequence's new floor after a restore: its highest known value plus its skip."""
    in_backup = {key: state.highest for key, state in manifest.sequences.items()}
    return floors_past((in_backup, highest(restored), survivors), manifest.taken_last_hour, elapsed_seconds, min_skip)


def floors_past(
    known: Iterable[Mapping[str, int]],
    taken_last_hour: Mapping[str, int],
    elapsed_seconds: float,
    min_skip: int = MIN_SKIP,
) -> dict[str, int]:
    """Each sequence's floor: the highest value any of ``known`` holds for it, plus its skip."""
    top: dict[str, int] = {}
    for values in known:
        for key, value in values.items():
            top[key] = max(top.get(key, 0), value)
    return {
        key: value + skip(taken_last_hour.get(key, 0), elapsed_seconds, min_skip) for key, value in sorted(top.items())
    }


def highest(states: Mapping[str, SequenceState]) -> dict[str, int]:
    return {key: state.highest for key, state in states.items()}


async def move_past(
    store: Store,
    floors: Mapping[str, int],
    restored: Mapping[str, SequenceState],
    seen: Mapping[str, int],
    *,
    burn_chats: bool = True,
) -> tuple[int, int]:
    """Raise every sequence to its floor and burn what lies below it; the smallest and largest move.

    Nothing holds the numbers between the highest stored (or seen) and the floor: lost with the
    old store, or never handed out. Reads of them answer 404, not "pending". Without
    ``burn_chats`` an application's chat numbers there stay "handed out": a message sent to one
    is taken, and stores the chat (a promotion: a chat the lost primary acked comes back).
    """
    await store.raise_sequences(floors)
    stored = {key: max(restored[key].stored if key in restored else 0, seen.get(key, 0)) for key in floors}
    burnt = [key for key in floors if key != APPLICATION_IDS and (burn_chats or not key.startswith(CHATS_PREFIX))]
    await store.burn_numbers({key: (stored[key], floors[key]) for key in burnt})
    moved = [
        floor - max(restored[key].highest if key in restored else 0, seen.get(key, 0)) for key, floor in floors.items()
    ]
    return (min(moved), max(moved)) if moved else (0, 0)
