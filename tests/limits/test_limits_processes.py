"""Rate limits with two ``chatd serve --role api`` processes sharing one store, on both sets.

Real set: the buckets are in Redis, so a tenant's writes spread over both processes are admitted
once in all (its burst), not once per process; an override made through one process applies on
the other within a second. Embedded default: each process counts on its own (README "Limits"),
so each admits the burst; the override reaches the other process within a second as well.
"""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp

from tests.conftest import Namespace
from tests.processes import ChatdProcess, application_and_chat

ADMIN = {"Authorization": "Bearer s3cret"}
# One write per 100 s after a burst of 6: no refill within the test.
LIMITS = {"rate_writes_per_second": 0.01, "rate_writes_burst": 6, "admin_token": "s3cret"}


async def _post(session: aiohttp.ClientSession, url: str) -> int:
    async with session.post(url, json={"content": "from both sides"}) as response:
        assert response.status in (201, 429), await response.text()
        if response.status == 429:
            assert response.headers["RateLimit"].startswith('"writes";r=0;') and response.headers["Retry-After"]
        return response.status


async def test_a_tenants_limit_holds_across_two_api_processes(namespace: Namespace, tmp_path: Path) -> None:
    settings = await namespace.serving_settings(**LIMITS)
    first = await ChatdProcess(settings, "api", tmp_path).start()
    second = await ChatdProcess(settings, "api", tmp_path).start()
    try:
        async with aiohttp.ClientSession() as session:
            token, chat = await application_and_chat(session, "both", first.url)  # 1 write on the first
            path = f"/applications/{token}/chats/{chat}/messages"
            statuses = {first.url: [], second.url: []}  # type: dict[str, list[int]]
            for _ in range(8):  # alternately, 16 more writes
                for process in (first, second):
                    statuses[process.url].append(await _post(session, process.url + path))
            admitted = {url: got.count(201) for url, got in statuses.items()}
            if namespace.backend_set == "real":
                assert sum(admitted.values()) == 5, statuses  # the burst of 6, less the chat, in all
            else:
                assert admitted == {first.url: 5, second.url: 6}, statuses  # each process its own burst
            # Every refusal came after the last admission on its process: a bucket, not a coin toss.
            for got in statuses.values():
                assert got == sorted(got, key=lambda status: status == 429)

            # The admin raises the limit through the first process; the second applies it within a second.
            async with session.put(
                f"{first.url}/applications/{token}/limits", json={"limits": {"writes_burst": 100}}, headers=ADMIN
            ) as response:
                assert response.status == 200
                changed_at = time.monotonic()
            assert await _post(session, first.url + path) == 201  # at once where it was made
            while await _post(session, second.url + path) != 201:
                assert time.monotonic() - changed_at < 1.0 + 0.75, "the override did not reach the second process"
    finally:
        first.stop_quietly()
        second.stop_quietly()
