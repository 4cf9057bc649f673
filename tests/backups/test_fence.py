"""Where a restore moves every sequence: ``fence.skip`` and ``fence.floors`` on their own, then the
stores' ``raise_sequences`` and a restore's fence past what only the survivors know, on both sets.
"""

from __future__ import annotations

import io
import secrets
import time
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from chatd.backends.registry import make_backends, opened
from chatd.backups import fence, restoring, taking
from chatd.backups.fence import MIN_SKIP, floors, skip
from chatd.backups.manifest import Manifest
from chatd.domain import ChatJob, MessageJob, NumberScope
from chatd.numbering import APPLICATION_IDS, NumberRequest, SequenceState
from chatd.ports import Backends, Store
from tests.backups.conftest import lose_the_store, seed, store_of
from tests.conftest import Api, Namespace

WHEN = datetime(2026, 11, 11, 10, 30, tzinfo=UTC)


def _manifest(sequences: dict[str, SequenceState], taken_last_hour: dict[str, int] | None = None) -> Manifest:
    return Manifest(
        engine="sqlite",
        chatd_version="test",
        schema=[],
        taken_at=WHEN,
        finished_at=WHEN,
        counts={},
        sequences=sequences,
        taken_last_hour=taken_last_hour or {},
        files=[],
        store_identity="",
    )


def test_a_quiet_sequence_skips_min_skip() -> None:
    assert MIN_SKIP == 1_000
    assert skip(0, 0) == MIN_SKIP
    assert skip(0, 365 * 86_400) == MIN_SKIP  # took nothing in its last hour: however long since
    assert skip(10, 60) == MIN_SKIP
    assert skip(3_600, 400) == MIN_SKIP  # 800 at its pace: less than the least skip
    assert skip(0, 10, min_skip=7) == 7


def test_a_busy_sequence_skips_twice_its_pace_for_every_second_since() -> None:
    assert skip(3_600, 86_400) == 172_800  # the module's example: 3,600 an hour, restored a day later
    assert skip(3_600, 600) == 1_200
    assert skip(1_800, 7_200, min_skip=0) == 7_200
    assert skip(3_600, 1_000, min_skip=1) == 2_000
    assert skip(1, 1, min_skip=0) == 1  # a part of a number is skipped as a whole one


def test_a_clock_behind_the_backup_skips_min_skip() -> None:
    assert skip(3_600_000, -3_600) == MIN_SKIP
    assert skip(3_600_000, -3_600, min_skip=0) == 0


def test_floors_take_the_highest_value_any_source_knows() -> None:
    manifest = _manifest(
        {
            APPLICATION_IDS: SequenceState(3, 3),
            "chats:1": SequenceState(10, 9),
            "messages:1:1": SequenceState(50, 48),
            "messages:1:2": SequenceState(30, 20),  # a counter the restored store has below it
        },
        taken_last_hour={"messages:1:1": 3_600, "messages:1:2": 36},
    )
    restored = {
        APPLICATION_IDS: SequenceState(3, 3),
        "chats:1": SequenceState(10, 12),  # a stored row above every counter (replayed from a job)
        "messages:1:1": SequenceState(50, 48),
        "messages:1:2": SequenceState(20, 20),
        "chats:2": SequenceState(0, 4),  # only the restored store knows it
    }
    survivors = {
        APPLICATION_IDS: 9,  # an application the backup lacks
        "chats:9": 2,
        "messages:9:2": 5,
        "messages:1:1": 70,  # acked after the backup: the survivors' value wins
        "chats:1": 11,
    }
    got = floors(manifest, restored, survivors, elapsed_seconds=3_600, min_skip=100)
    assert got == {
        APPLICATION_IDS: 9 + 100,
        "chats:1": 12 + 100,
        "chats:2": 4 + 100,
        "chats:9": 2 + 100,
        "messages:1:1": 70 + 7_200,  # busy: 2 x 1 a second x 3,600 s
        "messages:1:2": 30 + 100,  # the manifest's counter: never below it, nor below the restored value
        "messages:9:2": 5 + 100,
    }


def test_floors_of_nothing_are_nothing() -> None:
    assert floors(_manifest({}), {}, {}, elapsed_seconds=60) == {}


_KEYS = st.sampled_from([APPLICATION_IDS, "chats:1", "chats:2", "messages:1:1", "messages:2:7"])
_VALUES = st.integers(min_value=0, max_value=10**9)
_STATES = st.builds(SequenceState, _VALUES, _VALUES)


@hypothesis_settings(database=None, max_examples=200)
@given(
    recorded=st.dictionaries(_KEYS, _STATES),
    pace=st.dictionaries(_KEYS, st.integers(min_value=0, max_value=10**7)),
    restored=st.dictionaries(_KEYS, _STATES),
    survivors=st.dictionaries(_KEYS, _VALUES),
    elapsed=st.floats(min_value=-1e6, max_value=1e8, allow_nan=False),
    min_skip=st.integers(min_value=0, max_value=10**6),
)
def test_floors_are_never_below_anything_known(  # type: ignore[no-untyped-def]
    recorded, pace, restored, survivors, elapsed, min_skip
) -> None:
    got = floors(_manifest(recorded, pace), restored, survivors, elapsed, min_skip)
    assert set(got) == {*recorded, *restored, *survivors}
    for key, floor in got.items():
        known = [
            recorded[key].highest if key in recorded else 0,
            restored[key].highest if key in restored else 0,
            survivors.get(key, 0),
        ]
        assert floor == max(known) + skip(pace.get(key, 0), elapsed, min_skip)
        assert floor >= max(known) + min_skip


async def _take(store: Store, scope: NumberScope) -> int:
    [taken] = await store.take_numbers([NumberRequest(scope)], time.time(), 60.0)
    return taken.number


async def test_raise_sequences_moves_counters_forward_only(backends: Backends) -> None:
    store = backends.store
    app = await store.create_application(secrets.token_hex(16), "fenced", datetime.now(UTC))
    chats, messages = NumberScope(app.id), NumberScope(app.id, 1)
    assert [await _take(store, chats) for _ in range(3)] == [1, 2, 3]

    raised = {chats.key: 100, messages.key: 40, APPLICATION_IDS: app.id + 500}
    await store.raise_sequences(raised)
    moved = await store.sequences()
    assert moved[chats.key].reserved == 100
    assert moved[messages.key] == SequenceState(40, 0)  # a scope with no row yet: created
    assert moved[APPLICATION_IDS].reserved == app.id + 500
    assert await _take(store, chats) == 101
    assert await _take(store, messages) == 41
    after = await store.create_application(secrets.token_hex(16), "after", datetime.now(UTC))
    assert after.id == app.id + 501

    # Lower floors change nothing: no counter, nor the ids, ever moves back.
    before = await store.sequences()
    await store.raise_sequences({chats.key: 5, messages.key: 1, APPLICATION_IDS: 1})
    assert await store.sequences() == before
    assert await _take(store, chats) == 102
    assert await _take(store, messages) == 42
    assert (await store.create_application(secrets.token_hex(16), "next", datetime.now(UTC))).id == after.id + 1
    await store.raise_sequences({})


async def test_burnt_numbers_are_not_handed_out_ones(backends: Backends) -> None:
    store = backends.store
    scope = NumberScope(7, 3)
    await store.burn_numbers({scope.key: (10, 1_010), NumberScope(7).key: (4, 4)})  # an empty range: nothing
    assert [await store.is_burnt(scope, n) for n in (10, 11, 500, 1_010, 1_011)] == [False, True, True, True, False]
    assert not await store.is_burnt(NumberScope(7), 5) and not await store.is_burnt(NumberScope(7, 4), 11)
    # A second restore over the same range widens it, never narrows it.
    await store.burn_numbers({scope.key: (10, 600)})
    assert await store.is_burnt(scope, 1_010)
    await store.burn_numbers({scope.key: (10, 2_000)})
    assert await store.is_burnt(scope, 2_000)


async def test_a_fresh_stores_first_application_is_above_the_floor(backends: Backends) -> None:
    await backends.store.raise_sequences({APPLICATION_IDS: 50})
    assert (await backends.store.sequences())[APPLICATION_IDS].reserved == 50
    first = await backends.store.create_application(secrets.token_hex(16), "first", datetime.now(UTC))
    assert first.id == 51


async def test_jobs_of_an_application_the_backup_lacks_are_orphaned_and_its_id_fenced(  # type: ignore[no-untyped-def]
    namespace: Namespace, make_api, tmp_path
) -> None:
    real = namespace.backend_set == "real"
    settings = await namespace.settings()
    api: Api = await make_api()
    kept = await seed(api, "kept", 2)
    await taking.take_backup(settings, tmp_path / "backups")

    # Created after the backup: its token was only in the store that is lost.
    orphan = await seed(api, "orphan", 1)  # stored and indexed: its document outlives the store
    orphan_id = (await store_of(api).get_application(orphan.token)).id  # type: ignore[union-attr]
    if real:  # acked and still queued when the store is lost (the queue outlives it)
        queued = await api.create_message(orphan.token, orphan.chat, "orphan queued")
    highest_message = queued if real else max(orphan.texts)
    await api.client.close()
    # On the embedded set the search file is kept (on another disk): the index is the survivor.
    await lose_the_store(namespace, with_search=False)

    report = await restoring.restore(settings, tmp_path / "backups", out=io.StringIO())
    found = report.survivors
    assert found.orphaned == (2 if real else 1)
    assert found.left_in_queues == 0
    assert found.highest[APPLICATION_IDS] == orphan_id
    assert found.highest[f"messages:{orphan_id}:{orphan.chat}"] == highest_message

    backends = make_backends(settings)
    async with opened(backends):
        store = backends.store
        assert await store.get_application(orphan.token) is None
        assert await store.get_chat(orphan_id, orphan.chat) is None
        assert await store.list_messages_after(orphan_id, orphan.chat, 0, 100) == []
        assert await store.get_application(kept.token) is not None
        # Every sequence the orphan used moved past it, the ids too: none is handed out again.
        sequences = await store.sequences()
        assert sequences[APPLICATION_IDS].reserved >= orphan_id + fence.MIN_SKIP
        assert sequences[f"chats:{orphan_id}"].reserved >= orphan.chat + fence.MIN_SKIP
        assert sequences[f"messages:{orphan_id}:{orphan.chat}"].reserved >= highest_message + fence.MIN_SKIP
        created = await store.create_application(secrets.token_hex(16), "after the restore", datetime.now(UTC))
        assert created.id > orphan_id + fence.MIN_SKIP


def test_floors_past_take_the_highest_of_every_source_and_the_pace() -> None:
    found = fence.floors_past(({"a": 10, "b": 3}, {"a": 12}, {}), {"b": 3_600}, 600.0)
    assert found == {"a": 12 + MIN_SKIP, "b": 3 + 1_200}
    assert fence.floors_past((), {}, 60.0) == {}


async def test_newest_row_at_is_the_newest_creation_of_any_row(backends: Backends) -> None:
    store = backends.store
    assert await store.newest_row_at() is None
    app = await store.create_application(secrets.token_hex(16), "newest", WHEN)
    assert await store.newest_row_at() == WHEN
    later = WHEN.replace(hour=11)
    await store.save_chats([ChatJob(app.id, 1, later)])
    assert await store.newest_row_at() == later
    latest = WHEN.replace(hour=12, microsecond=250_000)
    await store.save_messages([MessageJob(app.id, 1, 1, "newest", latest)])
    assert await store.newest_row_at() == latest


async def test_a_promotion_burns_message_numbers_but_leaves_chat_numbers_handed_out(backends: Backends) -> None:
    store = backends.store
    chats, messages = NumberScope(9), NumberScope(9, 2)
    floors = {chats.key: 1_010, messages.key: 1_050}
    held = {chats.key: SequenceState(10, 10), messages.key: SequenceState(50, 50)}
    assert await fence.move_past(store, floors, held, {}, burn_chats=False) == (1_000, 1_000)
    assert await store.is_burnt(messages, 51)
    assert not await store.is_burnt(chats, 11)  # maybe acked by the lost primary: a message brings it back
    await fence.move_past(store, floors, held, {})
    assert await store.is_burnt(chats, 11)  # a restore's default
