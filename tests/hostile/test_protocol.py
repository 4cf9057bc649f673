"""Hostile and careless clients at the HTTP layer (issue 11): malformed requests and headers.

A real ``chatd serve`` process, raw bytes on a socket: an HTTP client library would refuse to
send most of these. Every answer must be chatd's JSON error, a 4xx, with no token echoed and no
ERROR record (or traceback) in the process's log.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import embedded_settings
from tests.processes import ChatdProcess

TOKEN = "tok_hostile_SECRET_0123456789"
PATH = f"/applications/{TOKEN}/chats"

# (name, raw request): each is refused by aiohttp's parser or Expect stage, not by a handler.
MALFORMED: list[tuple[str, bytes]] = [
    ("request line over 8,190 bytes", f"GET {PATH}/{'a' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n".encode()),
    ("header over 8,190 bytes", f"GET {PATH} HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 9000}\r\n\r\n".encode()),
    ("over 200 headers", (f"GET {PATH} HTTP/1.1\r\nHost: x\r\n" + "X-H: 1\r\n" * 210 + "\r\n").encode()),
    ("lower-case method", f"get {PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode()),
    ("unknown method", f"FETCH! {PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode()),
    ("bare LF line ends", f"GET {PATH} HTTP/1.1\nHost: x\n\n".encode()),
    (
        "Content-Length with Transfer-Encoding",
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode(),
    ),
    (
        "bad chunk size",
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n".encode(),
    ),
    ("HTTP/1.1 without Host", f"GET {PATH} HTTP/1.1\r\n\r\n".encode()),
    ("raw \\xff in the path", f"GET {PATH}/\xff HTTP/1.1\r\nHost: x\r\n\r\n".encode("latin-1")),
    ("raw \\xff in the query", f"GET {PATH}?page=\xff HTTP/1.1\r\nHost: x\r\n\r\n".encode("latin-1")),
    (
        "Content-Encoding: br",
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{{}}".encode(),
    ),
    ("Expect: 200-ok", f"POST {PATH} HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\n{{}}".encode()),
    (
        "Expect: 200-ok, unknown path",
        b"POST /nowhere HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\n{}",
    ),
]


@pytest.fixture
async def chatd(tmp_path: Path) -> AsyncIterator[ChatdProcess]:
    async with ChatdProcess(embedded_settings(tmp_path), "api", tmp_path) as process:
        yield process


async def exchange(process: ChatdProcess, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw``, read one response until the server closes (every error here closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", process.port)
    try:
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


async def test_malformed_requests_get_a_json_4xx_without_echo_or_traceback(chatd: ChatdProcess) -> None:
    wrong = []
    for name, raw in MALFORMED:
        status, headers, body = await exchange(chatd, raw)
        try:
            error = json.loads(body)["error"]
            shaped = isinstance(error["code"], str) and isinstance(error["message"], str)
        except (ValueError, KeyError, TypeError):
            shaped = False
        if not (
            400 <= status < 500
            and headers.get("content-type", "").startswith("application/json")
            and shaped
            and TOKEN.encode() not in body
            and b"aaaa" not in body
        ):
            wrong.append((name, status, headers.get("content-type"), body[:200]))
    assert not wrong, wrong
    # Every request was answered (and logged) before its response was read.
    log = chatd.log_path.read_text()
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")], log[-3000:]
    assert "Traceback" not in log and TOKEN not in log, log[-3000:]


async def test_the_server_header_does_not_name_versions(chatd: ChatdProcess) -> None:
    ok = await exchange(chatd, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    refused = await exchange(chatd, b"get /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    for status, headers, _ in (ok, refused):
        assert headers.get("server", "chatd") == "chatd", (status, headers)
