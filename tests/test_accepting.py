"""The Acceptor's group commit, on each backend set: shared round trips, and failures shared too."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pytest

from chatd.accepting import Acceptor
from chatd.domain import NumberScope
from chatd.errors import BackendUnavailable
from chatd.ports import Backends, CounterRange, Counters, Queue


class CountingCounters:
    """Counters that count ``take`` calls (each one round trip), and can be told to fail them."""

    def __init__(self, inner: Counters):
        self.inner = inner
        self.takes = 0
        self.failing = False

    async def take(self, counts: Mapping[str, int]) -> dict[str, CounterRange | None]:
        if self.failing:
            raise BackendUnavailable("counters down (test)")
        self.takes += 1
        return await self.inner.take(counts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class RecordingQueue:
    """A queue that records each publish call, and can be told to fail them."""

    def __init__(self, inner: Queue):
        self.inner = inner
        self.calls: list[tuple[str, list[bytes]]] = []
        self.failing = False

    async def publish(self, topic: str, bodies: Sequence[bytes]) -> None:
        if self.failing:
            raise BackendUnavailable("queue down (test)")
        self.calls.append((topic, list(bodies)))
        await self.inner.publish(topic, bodies)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def make_acceptor(backends: Backends, **options: Any) -> tuple[Acceptor, CountingCounters, RecordingQueue]:
    counters, queue = CountingCounters(backends.counters), RecordingQueue(backends.queue)
    acceptor = Acceptor(counters, backends.store, backends.cache, queue, **options)  # type: ignore[arg-type]
    return acceptor, counters, queue


def job_maker(label: str) -> Any:
    return lambda number: orjson.dumps({"label": label, "number": number})


async def test_a_burst_shares_counter_round_trips_and_publishes(backends: Backends) -> None:
    acceptor, counters, queue = make_acceptor(backends, max_in_flight=2)
    scopes = [NumberScope(1, chat) for chat in range(1, 5)]
    sends = [(scopes[i % 4], f"m{i}") for i in range(400)]
    numbers = await asyncio.gather(*(acceptor.accept(scope, "messages", job_maker(text)) for scope, text in sends))
    for scope in scopes:
        assert sorted(n for (s, _), n in zip(sends, numbers) if s == scope) == list(range(1, 101))
    published = [orjson.loads(body) for _, bodies in queue.calls for body in bodies]
    assert sorted((job["label"], job["number"]) for job in published) == sorted(
        (text, number) for (_, text), number in zip(sends, numbers)
    )  # every job once, with the number its request answered
    # 400 requests arrived in one loop iteration: a few groups, not one round trip each.
    assert counters.takes <= 10, counters.takes
    assert len(queue.calls) <= 10, len(queue.calls)


async def test_a_failed_publish_fails_every_request_of_the_group(backends: Backends) -> None:
    acceptor, _, queue = make_acceptor(backends)
    scope = NumberScope(1, 1)
    queue.failing = True
    results = await asyncio.gather(
        *(acceptor.accept(scope, "messages", job_maker(f"m{i}"), f"key-{i}") for i in range(20)),
        return_exceptions=True,
    )
    assert all(isinstance(result, BackendUnavailable) for result in results), results
    assert queue.calls == []  # no 201 was promised for a job that was not queued
    queue.failing = False
    # The keys were recorded before the failed publish: retries publish those jobs, same numbers.
    retried = await asyncio.gather(*(acceptor.accept(scope, "messages", job_maker("x"), f"key-{i}") for i in range(20)))
    assert sorted(retried) == list(range(1, 21))
    assert {orjson.loads(body)["label"] for _, bodies in queue.calls for body in bodies} == {f"m{i}" for i in range(20)}


async def test_a_failed_numbering_frees_the_idempotency_keys(backends: Backends) -> None:
    acceptor, counters, _ = make_acceptor(backends)
    scope = NumberScope(1, 1)
    counters.failing = True
    with pytest.raises(BackendUnavailable):
        await acceptor.accept(scope, "messages", job_maker("first"), "key")
    counters.failing = False
    assert await acceptor.accept(scope, "messages", job_maker("second"), "key") == 1


async def test_an_idempotent_retry_gets_the_first_number_and_publishes_the_same_job(backends: Backends) -> None:
    acceptor, _, queue = make_acceptor(backends)
    scope = NumberScope(1)
    first = await acceptor.accept(scope, "chats", job_maker("first"), "same")
    other = await acceptor.accept(scope, "chats", job_maker("other"))
    again = await acceptor.accept(scope, "chats", job_maker("changed"), "same")
    assert (first, other, again) == (1, 2, 1)
    assert [orjson.loads(bodies[0])["label"] for _, bodies in queue.calls] == ["first", "other", "first"]


async def test_one_key_twice_in_one_group_takes_one_number(backends: Backends) -> None:
    acceptor, _, queue = make_acceptor(backends)
    scope = NumberScope(1, 1)
    first, second = await asyncio.gather(
        acceptor.accept(scope, "messages", job_maker("first"), "twice"),
        acceptor.accept(scope, "messages", job_maker("second"), "twice"),
    )
    assert first == second == 1
    assert await acceptor.accept(scope, "messages", job_maker("next")) == 2
    # The second request published the first one's job again (workers store it once).
    labels = [orjson.loads(body)["label"] for _, bodies in queue.calls for body in bodies]
    assert set(labels) == {"first", "next"}


async def test_a_key_in_progress_elsewhere_waits_for_its_record(backends: Backends) -> None:
    acceptor, _, _ = make_acceptor(backends)
    scope = NumberScope(1, 1)
    key = f"idem:{scope.application_id}:elsewhere"
    assert await backends.cache.add(key, b"claimed", 10)  # another api process holds the key
    waiting = asyncio.create_task(acceptor.accept(scope, "messages", job_maker("retry"), "elsewhere"))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    recorded = orjson.dumps({"number": 7, "job": orjson.dumps({"label": "original", "number": 7}).decode()})
    await backends.cache.set(key, recorded, 60)  # the other process recorded its job
    assert await asyncio.wait_for(waiting, 10) == 7
