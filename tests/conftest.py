"""Test fixtures: every suite runs over the embedded backends and over the real servers.

The real servers (MariaDB, Redis, RabbitMQ, Elasticsearch) are started by `make services`
before pytest runs; each test gets its own namespace on them (a fresh database, key prefix,
queue prefix and index) and removes it afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from chatd.backends.registry import make_backends, opened
from chatd.ports import Backends
from chatd.service import ChatService
from chatd.settings import Settings
from tests.factories import FakeClock

MYSQL_URL = os.environ.get("CHATD_TEST_MYSQL_URL", "mysql://chatd:chatd@127.0.0.1:3306")
REDIS_URL = os.environ.get("CHATD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("CHATD_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
ELASTICSEARCH_URL = os.environ.get("CHATD_TEST_ELASTICSEARCH_URL", "http://127.0.0.1:9200")

# Tests on the real servers carry the ``real`` mark, so `make test-embedded` selects ``-m "not real"``.
REAL = pytest.param("real", marks=pytest.mark.real)
BACKEND_SETS = ("embedded", REAL)

# The setting that puts each port on its real server. A test that exercises some ports only
# (a contract test) says which through the ``ports`` fixture; on the real set the others stay
# embedded, so a Cache test neither creates a MySQL database nor deletes an index.
PORT_URLS = {
    "store": "database_url",
    "cache": "redis_url",
    "lock": "redis_url",
    "queue": "amqp_url",
    "search": "elasticsearch_url",
}
PORTS = tuple(PORT_URLS)


def unique_name() -> str:
    return "chatd_t_" + uuid.uuid4().hex[:12]


@asynccontextmanager
async def mysql_connection(database: str | None = None, url: str = MYSQL_URL) -> AsyncIterator[Any]:
    """An autocommit connection to the test MySQL server, for set-up and checks outside the store."""
    import aiomysql

    parts = urlsplit(url)
    conn = await aiomysql.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=parts.username,
        password=parts.password or "",
        db=database,
        autocommit=True,
        charset="utf8mb4",
    )
    try:
        yield conn
    finally:
        conn.close()


async def create_mysql_database(name: str) -> None:
    async with mysql_connection() as conn, conn.cursor() as cursor:
        await cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")


async def drop_mysql_database(name: str) -> None:
    async with mysql_connection() as conn, conn.cursor() as cursor:
        await cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")


# The suites set up their data through the API as fast as they can (500 chats at once, say): the
# rate limits stay on, every request goes through them and carries their fields, but at rates no
# test reaches. The tests of the limits themselves (tests/limits) set small ones.
UNREACHED_RATE_LIMITS: dict[str, object] = {
    **{
        f"rate_{kind}{part}": 1_000_000
        for kind in ("reads", "writes", "searches")
        for part in ("_per_second", "_burst")
    },
    "rate_refusal_hold_seconds": 0,  # refusals answered at once; tests/limits checks the hold
}


def embedded_settings(folder: Path, **overrides: object) -> Settings:
    values = {**UNREACHED_RATE_LIMITS, **overrides}
    return Settings(database_url=f"sqlite:///{folder}/chatd.db", search_path=f"{folder}/search.db", **values)  # type: ignore[arg-type]


def real_settings(name: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": f"{MYSQL_URL}/{name}",
        "redis_url": REDIS_URL,
        "redis_prefix": f"{name}:",
        "amqp_url": AMQP_URL,
        "amqp_prefix": name,
        "elasticsearch_url": ELASTICSEARCH_URL,
        "elasticsearch_index": name.replace("_", "-"),
        **UNREACHED_RATE_LIMITS,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


class Namespace:
    """Settings for one test on one backend set, and the clean-up of what it created.

    On the real set, only ``ports`` are on the real servers; the others are embedded.
    """

    def __init__(self, backend_set: str, folder: Path, ports: tuple[str, ...] = PORTS):
        self.backend_set = backend_set
        self.folder = folder
        self.ports = ports
        self.name = unique_name()
        # What the embedded backends read for leases and expiries; the real servers keep their own.
        self.clock = FakeClock()
        self._created_database = False
        self._opened = AsyncExitStack()

    async def settings(self, **overrides: object) -> Settings:
        if self.backend_set == "embedded":
            return embedded_settings(self.folder, **overrides)
        if "store" in self.ports and not self._created_database:
            await create_mysql_database(self.name)
            self._created_database = True
        return real_settings(self.name, **{**self._embedded_ports(), **overrides})

    def _embedded_ports(self) -> dict[str, object]:
        """The settings that keep the ports this test does not use off the real servers."""
        values: dict[str, object] = {url: None for port, url in PORT_URLS.items() if port not in self.ports}
        if not values:
            return values
        # The embedded files in this test's folder, never beside a MySQL database's name in the cwd.
        values.update(search_path=f"{self.folder}/search.db", embedded_path=f"{self.folder}/embedded.db")
        if "store" not in self.ports:
            values["database_url"] = f"sqlite:///{self.folder}/chatd.db"
        return values

    async def serving_settings(self, **overrides: object) -> Settings:
        """Settings for ``chatd serve`` processes of this namespace: on the real set its database
        is migrated first, as an operator runs `chatd migrate` (the embedded file migrates itself)."""
        if self.backend_set == "real":
            await self.open_backends()
        return await self.settings(**overrides)

    async def open_backends(self, **overrides: object) -> Backends:
        backends = make_backends(await self.settings(**overrides), self.clock)
        await self._opened.enter_async_context(opened(backends))
        await backends.store.migrate()
        return backends

    async def cleanup(self) -> None:
        try:
            await self._opened.aclose()
            if self.backend_set == "real":
                await self._destroy_namespace()
        finally:
            if self._created_database:
                await drop_mysql_database(self.name)

    async def _destroy_namespace(self) -> None:
        """Remove this test's keys, queues and index from the shared servers."""
        backends = make_backends(real_settings(self.name))
        chosen = {id(getattr(backends, port)) for port in self.ports if port != "store"}
        for backend in backends.all():
            destroy = getattr(backend, "destroy", None)
            if destroy is None or id(backend) not in chosen:
                continue
            await backend.open()
            try:
                await destroy()
            finally:
                await backend.close()


@pytest.fixture(params=BACKEND_SETS)
def backend_set(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def ports() -> tuple[str, ...]:
    """The ports a test uses; a module that tests some only overrides this fixture."""
    return PORTS


@pytest.fixture
async def namespace(backend_set: str, ports: tuple[str, ...], tmp_path: Path) -> AsyncIterator[Namespace]:
    space = Namespace(backend_set, tmp_path, ports)
    try:
        yield space
    finally:
        await space.cleanup()


@pytest.fixture
async def backends(namespace: Namespace) -> Backends:
    """Opened, migrated backends of the parametrized set."""
    return await namespace.open_backends()


@pytest.fixture
def service(backends: Backends) -> ChatService:
    return ChatService(backends)


class Api:
    """A test client on an app whose background pipeline the test drives with ``settle()``."""

    def __init__(self, client, app):  # type: ignore[no-untyped-def]
        from chatd import keys

        self.client = client
        self.app = app
        self.pipeline = app[keys.PIPELINE]
        self.service = app[keys.SERVICE]

    async def settle(self, *, expect_dead_letters: bool = False) -> None:
        """Run the workers until every queued job is stored, indexed and counted.

        Fails if a job was dead-lettered, unless the test says it expects that.
        """
        await self.pipeline.run_until_idle(expect_dead_letters=expect_dead_letters)

    async def create_application(self, name: str = "Test App") -> str:
        response = await self.client.post("/applications", json={"application": {"name": name}})
        assert response.status == 201, await response.text()
        return str((await response.json())["token"])

    async def create_chat(self, token: str) -> int:
        response = await self.client.post(f"/applications/{token}/chats")
        assert response.status == 201, await response.text()
        return int((await response.json())["number"])

    async def create_message(self, token: str, chat: int, content: str, idempotency_key: str | None = None) -> int:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
        response = await self.client.post(
            f"/applications/{token}/chats/{chat}/messages", json={"content": content}, headers=headers
        )
        assert response.status == 201, await response.text()
        return int((await response.json())["number"])

    async def get_json(self, path: str, status: int = 200):  # type: ignore[no-untyped-def]
        response = await self.client.get(path)
        assert response.status == status, await response.text()
        return await response.json()


@pytest.fixture
async def make_api(namespace: Namespace, aiohttp_client):  # type: ignore[no-untyped-def]
    """Factory: ``await make_api(**settings_overrides)`` -> Api on this test's backend set."""
    from chatd.app import create_app

    async def make(**overrides: object) -> Api:
        settings = await namespace.settings(**overrides)
        backends = make_backends(settings, namespace.clock)
        if namespace.backend_set == "real":
            async with opened(backends):
                await backends.store.migrate()  # production migrates with `chatd migrate`
        app = create_app(settings, backends=backends, run_workers=False)
        return Api(await aiohttp_client(app), app)

    return make


@pytest.fixture
async def api(make_api) -> Api:  # type: ignore[no-untyped-def]
    return await make_api()
