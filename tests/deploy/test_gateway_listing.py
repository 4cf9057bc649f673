"""The listing of every tenant's token, through the real nginx in front of a real `chatd serve` (issue 22).

The systemd layout: chatd on 127.0.0.1 behind nginx on the same host, so every request reaches
chatd from loopback whoever sent it. Without an admin token the listing must be closed to all,
a forged X-Forwarded-For included; with one, only the admin's Bearer header opens it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from tests.conftest import embedded_settings
from tests.deploy.helpers import Gateway
from tests.processes import ChatdProcess

FORGED = {"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"}


@asynccontextmanager
async def chatd_behind_nginx(
    tmp_path: Path, **settings: object
) -> AsyncIterator[tuple[str, str, aiohttp.ClientSession]]:
    """An api process on 127.0.0.1 (as chatd-api.service runs it) behind nginx.

    (gateway URL, chatd URL, a session for both that verifies the gateway's certificate).
    """
    folder = tmp_path / "chatd"
    folder.mkdir()
    async with ChatdProcess(embedded_settings(folder, **settings), "api", tmp_path) as process:
        with Gateway(tmp_path, process.port) as gateway:
            connector = aiohttp.TCPConnector(ssl=gateway.ssl)
            async with aiohttp.ClientSession(connector=connector) as session:
                yield gateway.url, process.url, session


async def create_application(session: aiohttp.ClientSession, url: str, name: str) -> str:
    """Made on chatd itself: the gateway's own limit on creations is not what these tests are about."""
    async with session.post(f"{url}/applications", json={"application": {"name": name}}) as answer:
        assert answer.status == 201, await answer.text()
        return str((await answer.json())["token"])


async def test_without_an_admin_token_nobody_lists_through_the_gateway(tmp_path: Path) -> None:
    async with chatd_behind_nginx(tmp_path) as (url, chatd, session):
        tokens = [await create_application(session, chatd, name) for name in ("Tenant one", "Tenant two")]
        for headers in ({}, FORGED, {**FORGED, "Authorization": "Bearer "}):
            async with session.get(f"{url}/applications", headers=headers) as answer:
                body = await answer.text()
                assert answer.status == 401, body
                assert (await answer.json())["error"]["code"] == "unauthorized"
                assert not [token for token in tokens if token in body]


async def test_the_admin_token_lists_through_the_gateway_and_nothing_else_does(tmp_path: Path) -> None:
    async with chatd_behind_nginx(tmp_path, admin_token="gateway-admin") as (url, chatd, session):
        token = await create_application(session, chatd, "Tenant")
        for headers in (FORGED, {"Authorization": "Bearer wrong"}):
            async with session.get(f"{url}/applications", headers=headers) as answer:
                assert answer.status == 401 and token not in await answer.text()
        async with session.get(f"{url}/applications", headers={"Authorization": "Bearer gateway-admin"}) as answer:
            assert answer.status == 200
            assert [app["token"] for app in (await answer.json())["data"]] == [token]
