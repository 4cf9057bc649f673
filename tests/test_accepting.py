"""The Acceptor's group commit, on each backend set: shared round trips, failures shared too, bounds."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from chatd.accepting import Acceptor
from chatd.domain import NumberScope
from chatd.errors import BackendUnavailable, Unavailable, Unprocessable
from chatd.numbering import NumberRequest, Taken
from chatd.ports import Backends, Queue, Store


class CountingStore:
    """A store that counts ``take_numbers`` calls (one transaction each), and can fail or hold them."""

    def __init__(self, inner: Store):
        self.inner = inner
        self.takes = 0
        self.failing = False
        self.held: asyncio.Event | None = None

    async def take_numbers(self, requests: Sequence[NumberRequest], now: float, ttl: float) -> list[Taken]:
        if self.held is not None:
            await self.held.wait()
        if self.failing:
            raise BackendUnavailable("store down (test)")
        self.takes += 1
        return await self.inner.take_numbers(requests, now, ttl)

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

    def labels(self) -> list[str]:
        return [orjson.loads(body)["label"] for _, bodies in self.calls for body in bodies]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def make_acceptor(backends: Backends, **options: Any) -> tuple[Acceptor, CountingStore, RecordingQueue]:
    store, queue = CountingStore(backends.store), RecordingQueue(backends.queue)
    acceptor = Acceptor(store, queue, **options)  # type: ignore[arg-type]
    return acceptor, store, queue


def job_maker(label: str) -> Any:
    return lambda number: orjson.dumps({"label": label, "number": number})


async def test_a_burst_shares_store_transactions_and_publishes(backends: Backends) -> None:
    acceptor, store, queue = make_acceptor(backends, max_in_flight=2)
    scopes = [NumberScope(1, chat) for chat in range(1, 5)]
    sends = [(scopes[i % 4], f"m{i}") for i in range(400)]
    numbers = await asyncio.gather(*(acceptor.accept(scope, "messages", job_maker(text)) for scope, text in sends))
    for scope in scopes:
        assert sorted(n for (s, _), n in zip(sends, numbers) if s == scope) == list(range(1, 101))
    published = [orjson.loads(body) for _, bodies in queue.calls for body in bodies]
    assert sorted((job["label"], job["number"]) for job in published) == sorted(
        (text, number) for (_, text), number in zip(sends, numbers)
    )  # every job once, with the number its request answered
    # 400 requests arrived in one loop iteration: a few groups, not one transaction each.
    assert store.takes <= 10, store.takes
    assert len(queue.calls) <= 10, len(queue.calls)


async def test_a_failed_publish_fails_the_group_and_a_retry_with_the_key_fills_its_number(backends: Backends) -> None:
    acceptor, _, queue = make_acceptor(backends)
    scope = NumberScope(1, 1)
    queue.failing = True
    results = await asyncio.gather(
        *(acceptor.accept(scope, "messages", job_maker(f"m{i}"), f"key-{i}", f"f{i}") for i in range(20)),
        return_exceptions=True,
    )
    assert all(isinstance(result, BackendUnavailable) for result in results), results
    assert queue.calls == []  # no 201 was promised for a job that was not queued
    queue.failing = False
    # The keys were recorded with their numbers: each retry publishes its job under its number.
    retried = await asyncio.gather(
        *(acceptor.accept(scope, "messages", job_maker(f"m{i}"), f"key-{i}", f"f{i}") for i in range(20))
    )
    assert retried == list(range(1, 21)) or sorted(retried) == list(range(1, 21))
    published = {orjson.loads(body)["label"]: orjson.loads(body)["number"] for _, b in queue.calls for body in b}
    assert published == {f"m{i}": number for i, number in zip(range(20), retried)}
    assert await acceptor.accept(scope, "messages", job_maker("next")) == 21  # the failed group burnt nothing


async def test_a_failed_numbering_records_nothing(backends: Backends) -> None:
    acceptor, store, _ = make_acceptor(backends)
    scope = NumberScope(1, 1)
    store.failing = True
    with pytest.raises(BackendUnavailable):
        await acceptor.accept(scope, "messages", job_maker("first"), "key", "f")
    store.failing = False
    assert await acceptor.accept(scope, "messages", job_maker("second"), "key", "f") == 1


async def test_an_idempotent_retry_gets_the_first_number_and_another_body_gets_422(backends: Backends) -> None:
    acceptor, _, queue = make_acceptor(backends)
    scope = NumberScope(1)
    first = await acceptor.accept(scope, "chats", job_maker("first"), "same", "chat")
    other = await acceptor.accept(scope, "chats", job_maker("other"))
    again = await acceptor.accept(scope, "chats", job_maker("retry"), "same", "chat")
    assert (first, other, again) == (1, 2, 1)
    assert queue.labels() == ["first", "other", "retry"]  # the retry's job: the same number, stored once
    with pytest.raises(Unprocessable) as refused:
        await acceptor.accept(scope, "chats", job_maker("reused"), "same", "message:1:abc")
    assert refused.value.code == "idempotency_key_reused"


async def test_one_key_twice_in_one_group_takes_one_number_and_one_job(backends: Backends) -> None:
    acceptor, _, queue = make_acceptor(backends)
    scope = NumberScope(1, 1)
    first, second = await asyncio.gather(
        acceptor.accept(scope, "messages", job_maker("first"), "twice", "f"),
        acceptor.accept(scope, "messages", job_maker("second"), "twice", "f"),
    )
    assert first == second == 1
    assert await acceptor.accept(scope, "messages", job_maker("next")) == 2
    assert queue.labels() == ["first", "next"]


async def test_creations_past_the_pending_bound_are_shed_at_once(backends: Backends) -> None:
    acceptor, store, _ = make_acceptor(backends, max_in_flight=1, max_pending=3)
    store.held = asyncio.Event()
    scope = NumberScope(1, 1)
    in_flight = asyncio.create_task(acceptor.accept(scope, "messages", job_maker("in flight")))
    await asyncio.sleep(0)  # its group starts and waits on the store
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(acceptor.accept(scope, "messages", job_maker(f"w{i}"))) for i in range(3)]
    await asyncio.sleep(0)
    with pytest.raises(Unavailable) as shed:
        await acceptor.accept(scope, "messages", job_maker("one too many"))
    assert (shed.value.status, shed.value.code, shed.value.headers) == (503, "overloaded", {"Retry-After": "1"})
    store.held.set()
    assert sorted(await asyncio.gather(in_flight, *waiting)) == [1, 2, 3, 4]


async def test_a_store_that_does_not_answer_fails_the_group_in_time(backends: Backends) -> None:
    acceptor, store, _ = make_acceptor(backends, numbering_timeout=0.2)
    store.held = asyncio.Event()  # never set: a partitioned database
    scope = NumberScope(1, 1)
    started = asyncio.get_running_loop().time()
    with pytest.raises(BackendUnavailable):
        await acceptor.accept(scope, "messages", job_maker("late"))
    assert asyncio.get_running_loop().time() - started < 2.0


async def test_a_request_that_stopped_waiting_takes_no_number(backends: Backends) -> None:
    acceptor, store, queue = make_acceptor(backends, max_in_flight=1)
    store.held = asyncio.Event()
    scope = NumberScope(1, 1)
    first = asyncio.create_task(acceptor.accept(scope, "messages", job_maker("first")))
    await asyncio.sleep(0.01)
    gone = asyncio.create_task(acceptor.accept(scope, "messages", job_maker("gone")))
    await asyncio.sleep(0.01)
    gone.cancel()  # its deadline passed while it waited for a group
    store.held.set()
    assert await first == 1
    assert await acceptor.accept(scope, "messages", job_maker("next")) == 2
    assert queue.labels() == ["first", "next"]


async def test_one_key_sent_to_two_api_processes_at_once_takes_one_number(backends: Backends) -> None:
    """Two acceptors on one store (two api processes), each in a group of its own: the key's number is one."""
    first, _, first_queue = make_acceptor(backends)
    second, _, second_queue = make_acceptor(backends)
    scope = NumberScope(1, 1)
    answers = await asyncio.gather(
        first.accept(scope, "messages", job_maker("via first"), "shared", "f"),
        second.accept(scope, "messages", job_maker("via second"), "shared", "f"),
    )
    assert answers == [1, 1]
    # Each published its job under that number (the message is stored once, by its number).
    published = [orjson.loads(body)["number"] for q in (first_queue, second_queue) for _, b in q.calls for body in b]
    assert published == [1, 1]
    assert await second.accept(scope, "messages", job_maker("next")) == 2  # nothing burnt
    with pytest.raises(Unprocessable):  # the key is the store's: another body is refused by either process
        await first.accept(scope, "messages", job_maker("other"), "shared", "another body")
