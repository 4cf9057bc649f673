"""Hostile and careless clients sending bodies (issue 11): stalled, abandoned, or too large.

Raw bytes on a socket to the test server (or a real ``chatd serve``), on both backend sets.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Api, Namespace
from tests.factories import eventually
from tests.processes import ChatdProcess


async def connect(api: Api) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    url = api.client.make_url("/")
    return await asyncio.open_connection(url.host, url.port)


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def post_head(length: int, extra: str = "") -> bytes:
    return (
        f"POST /applications HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


TRICKLE_BYTES = 200


@pytest.mark.parametrize("trickle", [False, True], ids=["stalled", "trickled"])
async def test_a_body_that_never_finishes_gets_408(make_api, trickle: bool) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(body_timeout_seconds=0.5)
    reader, writer = await connect(api)
    trickled = 0
    try:
        writer.write(post_head(100) + b'{"application": ')
        await writer.drain()
        answer = asyncio.ensure_future(reader.read())
        # A byte every 0.1 s must not reset the clock: the bound is on the whole body. If each
        # byte reset it, no answer would come while 200 bytes trickle in (20 s, forty bounds:
        # room for a machine busy with other tests, where the answer may take a few seconds).
        while trickle and not answer.done() and trickled < TRICKLE_BYTES:
            try:
                writer.write(b" ")
                await writer.drain()
            except ConnectionError:
                break  # the server answered and closed meanwhile: the answer is in the reader
            trickled += 1
            await asyncio.wait([answer], timeout=0.1)
        status, headers, body = parse(await asyncio.wait_for(answer, 10))
    finally:
        writer.close()
    assert status == 408, body
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert trickled < TRICKLE_BYTES, "the answer came only once the client stopped sending"


async def requests_counted(session: aiohttp.ClientSession, process: ChatdProcess, status: str) -> float:
    """``chatd_http_requests_total`` for POST /applications with ``status``, from /metrics."""
    async with session.get(f"{process.url}/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = {"method": "POST", "route": "/applications", "status": status}
            if sample.name == "chatd_http_requests_total" and sample.labels == labels:
                return float(sample.value)
    return 0.0


async def test_a_client_gone_mid_body_is_counted_499_without_error(namespace: Namespace, tmp_path: Path) -> None:
    # A real `chatd serve`: aiohttp's test server cancels the handler of a closed connection,
    # where chatd's runner (like aiohttp's default) lets it see the reset while reading.
    process = await ChatdProcess(await namespace.serving_settings(), "api", tmp_path).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", process.port)
        # The 100 Continue says the request reached the application: the close cannot beat it.
        writer.write(post_head(100, "Expect: 100-continue\r\n"))
        await writer.drain()
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 100")
        writer.write(b'{"application": ')
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        async with aiohttp.ClientSession() as session:

            async def counted() -> bool:
                return bool(
                    await requests_counted(session, process, "499") or await requests_counted(session, process, "500")
                )

            await eventually(counted, timeout=5)
            assert await requests_counted(session, process, "500") == 0
            assert await requests_counted(session, process, "499") == 1
        log = process.log_path.read_text()
        records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")], log[-3000:]
        assert "Traceback" not in log, log[-3000:]
    finally:
        process.stop_quietly()


async def test_expect_100_continue_with_an_oversized_body_gets_413_at_once(api: Api) -> None:
    reader, writer = await connect(api)
    try:
        writer.write(post_head(10_000_000, "Expect: 100-continue\r\n"))
        await writer.drain()
        # The first answer, without sending any of the body: 413, not an invitation (100).
        status, headers, body = parse(await asyncio.wait_for(reader.readuntil(b"}}"), 5))
    finally:
        writer.close()
    assert status == 413, body
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "body_too_large"


async def test_expect_100_continue_within_the_limit_still_works(api: Api) -> None:
    body = json.dumps({"application": {"name": "Expecting"}}).encode()
    reader, writer = await connect(api)
    try:
        writer.write(post_head(len(body), "Expect: 100-continue\r\nConnection: close\r\n"))
        await writer.drain()
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 100")
        writer.write(body)
        await writer.drain()
        status, _, answer = parse(await asyncio.wait_for(reader.read(), 5))
    finally:
        writer.close()
    assert status == 201, answer
