"""The registry's lifecycle: every backend entered on one AsyncExitStack, shared connections around them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from chatd.backends.lifecycle import Lifecycle
from chatd.backends.registry import make_backends, opened
from chatd.backends.sqlite_db import SqliteBacked, SqliteDatabase
from chatd.ports import Backends
from tests.conftest import embedded_settings


class Failing(Lifecycle):
    """A backend whose open or close raises; it records that it was asked."""

    name = "failing"

    def __init__(self, *, on_open: bool = False, on_close: bool = False):
        self.on_open, self.on_close = on_open, on_close
        self.opened = self.closed = False

    async def open(self) -> None:
        self.opened = True
        if self.on_open:
            raise RuntimeError("open failed")

    async def close(self) -> None:
        self.closed = True
        if self.on_close:
            raise RuntimeError("close failed")

    async def ping(self) -> None:
        pass


async def assert_all_closed(backends: Backends) -> None:
    """Every embedded database is closed: each embedded backend's ping finds it so."""
    assert backends.connections and all(isinstance(c, SqliteDatabase) for c in backends.connections)
    embedded = [backend for backend in backends.all() if isinstance(backend, SqliteBacked)]
    assert len(embedded) >= 3  # the store, the queue and the search index at least
    for backend in embedded:
        with pytest.raises(RuntimeError, match="database is closed"):
            await backend.ping()


async def test_a_backend_whose_close_fails_does_not_keep_the_others_open(tmp_path: Path) -> None:
    cache, lock = Failing(on_close=True), Failing(on_close=True)
    backends = dataclasses.replace(make_backends(embedded_settings(tmp_path)), cache=cache, lock=lock)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="close failed"):
        async with opened(backends):
            await backends.store.migrate()
            await backends.queue.publish("chats", [b"job"])
    assert cache.closed and lock.closed  # both asked, the second failure did not skip the first
    await assert_all_closed(backends)


async def test_a_backend_that_fails_to_open_closes_those_opened_before(tmp_path: Path) -> None:
    queue = Failing(on_open=True)
    backends = dataclasses.replace(make_backends(embedded_settings(tmp_path)), queue=queue)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="open failed"):
        async with opened(backends):
            pytest.fail("not reached")
    assert not queue.closed  # never opened: nothing to close
    await assert_all_closed(backends)


async def test_backends_of_one_file_share_one_database(tmp_path: Path) -> None:
    backends = make_backends(embedded_settings(tmp_path))
    shared = {id(backend.db) for backend in (backends.store, backends.cache, backends.lock)}  # type: ignore[attr-defined]
    assert shared == {id(backends.queue.db)}  # type: ignore[attr-defined]
    assert len(backends.connections) == 2  # the store's file and the search file
    async with opened(backends):
        await backends.store.migrate()
        await backends.cache.set("k", b"v", 60)
    async with opened(backends):  # opened again after a close, as the test client does
        assert await backends.cache.get("k") == b"v"
