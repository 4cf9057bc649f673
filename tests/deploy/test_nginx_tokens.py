"""The gateway keeps tenants' tokens out of its logs and its public surface small.

Through the real nginx running deploy/nginx.conf in front of a real chatd app (both backend
sets), over HTTPS: every line nginx writes (access log, error log, start-up log) is searched for
the token, a plain-HTTP request's (redirected) too; /readyz is not public; creating applications
is rate-limited per address.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections import Counter
from pathlib import Path

import aiohttp

from tests.conftest import Api
from tests.deploy.helpers import Directive, Gateway, http_block
from tests.factories import eventually
from tests.live.helpers import SseStream, WsStream
from tests.servers import free_port

TOO_LARGE = b'{"content": "' + b"x" * (64 * 1024) + b'"}'


async def drive_tenant_traffic(api: Api, session: aiohttp.ClientSession) -> str:
    """Every kind of request a tenant makes, through the gateway; returns the tenant's token."""
    async with session.post("/applications", json={"application": {"name": "logged"}}) as created:
        assert created.status == 201, await created.text()
        token = str((await created.json())["token"])
    base = f"/applications/{token}"
    async with session.post(f"{base}/chats") as chat:
        assert chat.status == 201, await chat.text()
    await api.settle()
    async with session.get(f"{base}/chats/1/events") as events:
        assert events.status == 200
        websocket = await session.ws_connect(f"{base}/chats/1/events")
        async with session.post(f"{base}/chats/1/messages", json={"content": "hello gateway"}) as message:
            assert message.status == 201, await message.text()
        await api.settle()
        assert (await SseStream(events).next()).data["content"] == "hello gateway"
        assert (await WsStream(websocket).next()).data["content"] == "hello gateway"
        await websocket.close()
    for path, status in [
        (base, 200),
        (f"{base}/chats", 200),
        (f"{base}/chats/1", 200),
        (f"{base}/chats/1/messages", 200),
        (f"{base}/chats/1/messages/search?query=hello", 200),
        (f"{base}/no/such/path", 404),
        (f"/Applications/{token}", 404),
    ]:
        async with session.get(path) as response:
            assert response.status == status, (path, await response.text())
    async with session.post(f"{base}/chats/1/messages", data=TOO_LARGE) as refused:
        assert refused.status == 413
    await burst_until_limited(session, f"{base}/chats")
    return token


async def logged(gateway: Gateway, *answers: tuple[str, int]) -> None:
    """Wait until the access log records each ``(route, status)`` (a stream's when it ends)."""

    async def all_there() -> bool:
        records = {(record["route"], record["status"]) for record in map(json.loads, gateway.access_log())}
        return set(answers) <= records

    await eventually(all_there, timeout=15)


async def burst_until_limited(session: aiohttp.ClientSession, path: str, timeout: float = 30.0) -> None:
    """Requests in bursts of 100 until the gateway answers one with 429."""
    deadline = time.monotonic() + timeout

    async def status() -> int:
        async with session.get(path) as response:
            await response.read()
            return response.status

    while True:
        statuses = Counter(await asyncio.gather(*(status() for _ in range(100))))
        assert set(statuses) <= {200, 429}, statuses
        if statuses[429]:
            return
        assert time.monotonic() < deadline, "no request was rate-limited"


def assert_no_token(gateway: Gateway, token: str) -> list[dict[str, object]]:
    """No line nginx wrote holds the token; returns the access log's records."""
    lines = gateway.access_log() + gateway.error_log()
    leaked = [line for line in lines if token in line]
    assert not leaked, f"{len(leaked)} log lines hold the token, e.g. {leaked[0]}"
    return [json.loads(line) for line in gateway.access_log()]


async def test_no_token_in_the_gateway_logs(make_api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(live_keepalive_seconds=0.2)
    with Gateway(tmp_path, api.client.server.port) as gateway:
        async with gateway.session() as session:
            token = await drive_tenant_traffic(api, session)
            # Sent in clear by a misconfigured client: redirected, and logged masked as well.
            plain = f"{gateway.http_url}/applications/{token}/chats/1/messages/search?query=hello"
            async with session.get(plain, allow_redirects=False) as redirected:
                assert redirected.status == 308
        events = "/applications/{token}/chats/1/events"
        await logged(gateway, (events, 200), (events, 101))
    records = assert_no_token(gateway, token)
    seen = {(record["method"], record["route"], record["status"]) for record in records}
    assert {
        ("POST", "/applications", 201),
        ("POST", "/applications/{token}/chats", 201),
        ("POST", "/applications/{token}/chats/1/messages", 201),
        ("POST", "/applications/{token}/chats/1/messages", 413),
        ("GET", "/applications/{token}/chats/1/events", 200),
        ("GET", "/applications/{token}/chats/1/events", 101),
        ("GET", "/applications/{token}/chats/1/messages/search", 200),
        ("GET", "/applications/{token}/chats/1/messages/search", 308),
        ("GET", "/applications/{token}/no/such/path", 404),
        ("GET", "/applications/{token}", 404),
        ("GET", "/applications/{token}/chats", 429),
    } <= seen, seen


async def test_no_token_in_the_gateway_logs_when_the_api_fails(tmp_path: Path) -> None:
    """A replica that does not answer in time (504), then none that takes connections (502)."""
    edits = {"proxy_read_timeout 30s;": "proxy_read_timeout 1s;"}
    token = "a-token-that-must-not-be-logged"
    # Listens (the kernel completes each connection) but never reads or answers.
    with (
        socket.create_server(("127.0.0.1", free_port()), backlog=16) as silent,
        Gateway(tmp_path, silent.getsockname()[1], edits) as gateway,
    ):
        async with gateway.session() as session:
            async with session.get(f"/applications/{token}/chats/1/messages") as timed_out:
                assert timed_out.status == 504
                assert (await timed_out.json())["error"]["code"] == "gateway_timeout"
            silent.close()
            async with session.get(f"/applications/{token}/chats/1/messages") as refused:
                assert refused.status == 502
                assert (await refused.json())["error"]["code"] == "bad_gateway"
    records = assert_no_token(gateway, token)
    assert [(r["route"], r["status"]) for r in records] == [
        ("/applications/{token}/chats/1/messages", s) for s in (504, 502)
    ]


# Variables that hold the path (and so the token) or the query string, unmasked.
UNMASKED = re.compile(r"\$\{?(request_uri|request|uri|document_uri|args|query_string|arg_\w+|http_referer)\b")


def test_the_access_log_names_no_path_variable_unmasked(nginx: Directive) -> None:
    for log_format in http_block(nginx).find("log_format"):
        text = "".join(log_format.args)
        assert not UNMASKED.search(text), f"log_format {log_format.args[0]} logs {UNMASKED.search(text)}"
        assert "$chatd_route" in text


async def test_readyz_is_not_public(make_api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api()
    assert (await api.client.get("/readyz")).status == 200  # chatd answers it on the internal network
    with Gateway(tmp_path, api.client.server.port) as gateway:
        async with gateway.session() as session:
            async with session.get("/readyz") as readyz:
                assert readyz.status == 404
                body = await readyz.json()
                assert body == {"error": {"code": "not_found", "message": "not found"}}
            for path in ("/gateway/healthz", "/healthz"):
                async with session.get(path) as alive:
                    assert alive.status == 200, path


async def test_creating_applications_is_rate_limited_per_address(make_api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api()
    with Gateway(tmp_path, api.client.server.port) as gateway:
        async with gateway.session() as session:
            started = time.monotonic()
            answers = []
            for index in range(10):
                async with session.post("/applications", json={"application": {"name": f"app {index}"}}) as response:
                    answers.append((response.status, dict(response.headers), await response.json()))
            elapsed = time.monotonic() - started
            statuses = [status for status, _, _ in answers]
            # 5 a minute after a burst of 5: 6 at once, one more for each 12 s the loop took.
            assert statuses[:6] == [201] * 6 and set(statuses) == {201, 429}, statuses
            assert statuses.count(201) <= 6 + int(elapsed // 12), (statuses, elapsed)
            _, headers, body = answers[statuses.index(429)]
            assert body["error"]["code"] == "rate_limited" and headers["Retry-After"] == "12"
            # Only creating is held back: listing and the tenants' own endpoints go on.
            async with session.get("/applications") as listing:
                assert listing.status != 429
            token = answers[0][2]["token"]
            async with session.post(f"/applications/{token}/chats") as chat:
                assert chat.status == 201, await chat.text()
        # Another address has an allowance of its own.
        async with gateway.session(local_addr=("127.0.0.2", 0)) as other:
            async with other.post("/applications", json={"application": {"name": "elsewhere"}}) as response:
                assert response.status == 201, await response.text()
