"""Issue 22's smaller hardening items: chatd's headers on every response, and /readyz's answer.

The headers are read off a real ``chatd serve`` process with raw sockets: the production
protocol (``ChatdRunner``) is in the path, and a stream's headers are read as they go out,
before any body. /readyz is asked through the test client, with a backend that cannot answer.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from chatd.app import create_app
from chatd.handlers.docs import DOCS_POLICY
from chatd.handlers.headers import DEFAULT_POLICY
from chatd.handlers.page import PAGE_POLICY
from tests.conftest import embedded_settings
from tests.processes import ChatdProcess, application_and_chat
from tests.servers import free_port

SECURITY_HEADERS = {
    "server": "chatd",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


@pytest.fixture
async def chatd(tmp_path: Path) -> AsyncIterator[ChatdProcess]:
    # One search per 100 s after the first: the second one is refused (429 rate_limited).
    settings = embedded_settings(tmp_path, rate_searches_per_second=0.01, rate_searches_burst=1)
    async with ChatdProcess(settings, "all", tmp_path) as process:
        yield process


async def head(process: ChatdProcess, raw: bytes) -> tuple[int, dict[str, str]]:
    """Send ``raw`` and read the response's status line and headers (not waiting for a body:
    a stream's body never ends)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", process.port)
    try:
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    lines = answer.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


def get(path: str, *extra: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: x", *extra, "", ""]).encode()


def post(path: str, body: bytes, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    return "\r\n".join([*lines, *extra, "", ""]).encode() + body


async def token_and_chat(process: ChatdProcess) -> tuple[str, int]:
    async with aiohttp.ClientSession() as session:
        return await application_and_chat(session, "headers", process.url)


async def test_every_kind_of_response_carries_chatds_headers(chatd: ChatdProcess) -> None:
    token, chat = await token_and_chat(chatd)
    websocket_key = base64.b64encode(os.urandom(16)).decode()
    requests: dict[str, tuple[bytes, int, str]] = {
        "health": (get("/healthz"), 200, DEFAULT_POLICY),
        "created": (post("/applications", b'{"application": {"name": "x"}}'), 201, DEFAULT_POLICY),
        "no such route": (get("/nowhere"), 404, DEFAULT_POLICY),
        "no such application": (get("/applications/nobody/chats"), 404, DEFAULT_POLICY),
        "bad JSON": (post("/applications", b"{"), 400, DEFAULT_POLICY),
        "wrong method": (b"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 405, DEFAULT_POLICY),
        "page": (get("/"), 200, PAGE_POLICY),
        "page script": (get("/static/app.js"), 200, DEFAULT_POLICY),
        "docs": (get("/docs"), 200, DOCS_POLICY),
        "docs script": (get("/docs/assets/chatd-init.js"), 200, DEFAULT_POLICY),
        "openapi": (get("/openapi.json"), 200, DEFAULT_POLICY),
        "metrics": (get("/metrics"), 200, DEFAULT_POLICY),
        "readiness": (get("/readyz"), 200, DEFAULT_POLICY),
        "search": (get(f"/applications/{token}/chats/{chat}/messages/search?query=x"), 200, DEFAULT_POLICY),
        "rate limited": (get(f"/applications/{token}/chats/{chat}/messages/search?query=x"), 429, DEFAULT_POLICY),
        "SSE stream": (get(f"/applications/{token}/chats/{chat}/events"), 200, DEFAULT_POLICY),
        "SSE application stream": (get(f"/applications/{token}/events"), 200, DEFAULT_POLICY),
        "WebSocket upgrade": (
            get(
                f"/applications/{token}/chats/{chat}/events",
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {websocket_key}",
                "Sec-WebSocket-Version: 13",
            ),
            101,
            DEFAULT_POLICY,
        ),
        # Answered before the handler: the Expect stage, and the HTTP parser (no route at all).
        "Expect refused": (post(f"/applications/{token}/chats", b"{}", "Expect: 200-ok"), 417, DEFAULT_POLICY),
        "Expect, body too large": (
            b"POST /applications HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 99999999\r\n\r\n",
            413,
            DEFAULT_POLICY,
        ),
        "malformed request": (b"get /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400, DEFAULT_POLICY),
    }
    wrong = {}
    for name, (raw, status, csp) in requests.items():
        got_status, headers = await head(chatd, raw)
        expected = {**SECURITY_HEADERS, "content-security-policy": csp}
        got = {header: headers.get(header) for header in expected}
        if got_status != status or got != expected:
            wrong[name] = (got_status, got)
    assert not wrong, wrong


def test_the_policies_allow_no_inline_code_and_no_framing() -> None:
    for policy in (DEFAULT_POLICY, PAGE_POLICY, DOCS_POLICY):
        directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
        assert directives["default-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
        assert directives["base-uri"] == "'none'"
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "connect-src 'self'" in PAGE_POLICY and "script-src 'self'" in DOCS_POLICY


async def test_readyz_names_the_backend_that_is_down_and_keeps_why_for_the_log(  # type: ignore[no-untyped-def]
    aiohttp_client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A Redis nobody listens on, by host name: the driver's error names the host and the port.
    port = free_port()
    settings = embedded_settings(tmp_path, redis_url=f"redis://localhost:{port}/0")
    client = await aiohttp_client(create_app(settings, run_workers=False))
    with caplog.at_level(logging.WARNING, logger="chatd.handlers.health"):
        response = await client.get("/readyz", headers={"X-Forwarded-For": "127.0.0.1"})
    body = await response.json()
    assert response.status == 503
    assert body["status"] == "unavailable"
    assert body["checks"]["sqlite"] == "ok"
    assert body["checks"]["redis-cache"] == "unavailable" and body["checks"]["redis-lock"] == "unavailable"
    assert set(body["checks"].values()) == {"ok", "unavailable"}
    text = await response.text()
    assert "localhost" not in text and str(port) not in text
    # The operator finds why in the log.
    reasons = [record.getMessage() for record in caplog.records if record.name == "chatd.handlers.health"]
    assert any("redis-cache is unavailable" in reason and str(port) in reason for reason in reasons), reasons
