"""Per-application rate limits through the API, on both backend sets.

A tenant over a limit gets 429 ``rate_limited`` with ``Retry-After`` and the RateLimit fields,
while another tenant's requests all succeed; the fields are on every answer that reached the
application; the admin's override applies from the next request; live streams are counted;
each refusal is counted in the metrics and logged once per application.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from aiohttp import ClientResponse

from chatd.handlers import headers as security
from tests.conftest import Api

ADMIN = {"Authorization": "Bearer s3cret"}
# Small limits that refill too slowly to matter within a test: one write per 100 s.
SLOW = {"rate_writes_per_second": 0.01, "rate_writes_burst": 5, "rate_searches_per_second": 0.01}
SLOW |= {"rate_searches_burst": 2, "rate_reads_per_second": 0.01, "rate_reads_burst": 50, "admin_token": "s3cret"}


def fields(response: ClientResponse) -> tuple[str, str]:
    return response.headers["RateLimit-Policy"], response.headers["RateLimit"]


async def post_message(api: Api, token: str, chat: int, content: str = "hi") -> ClientResponse:
    return await api.client.post(f"/applications/{token}/chats/{chat}/messages", json={"content": content})


async def test_a_tenant_over_its_limit_gets_429s_while_another_goes_on(make_api: Any) -> None:
    api: Api = await make_api(**SLOW)
    flooder, quiet = await api.create_application("flooder"), await api.create_application("quiet")
    chat = await api.create_chat(flooder)  # the first of its 5 writes
    answers = [await post_message(api, flooder, chat) for _ in range(6)]
    assert [answer.status for answer in answers] == [201, 201, 201, 201, 429, 429]
    assert [fields(answer) for answer in answers[:4]] == [
        ('"writes";q=5;w=500', f'"writes";r={left};t={100 * (5 - left)}') for left in (3, 2, 1, 0)
    ]
    refused = answers[4]
    body = await refused.json()
    assert body["error"]["code"] == "rate_limited" and "writes limit" in body["error"]["message"]
    retry = int(refused.headers["Retry-After"])
    assert 99 <= retry <= 100
    assert fields(refused) == ('"writes";q=5;w=500', f'"writes";r=0;t={retry}')
    for name, value in (("Server", security.SERVER), ("X-Content-Type-Options", "nosniff")):
        assert refused.headers[name] == value
    assert refused.headers["Content-Security-Policy"] == security.DEFAULT_POLICY

    # Its reads are another policy, and go on.
    read = await api.client.get(f"/applications/{flooder}/chats/{chat}")
    assert read.status in (200, 404) and fields(read)[0] == '"reads";q=50;w=5000'
    # Another tenant's writes all succeed, with a full bucket of its own.
    quiet_chat = await api.create_chat(quiet)
    for _ in range(4):
        answer = await post_message(api, quiet, quiet_chat)
        assert answer.status == 201
    assert fields(answer)[1].startswith('"writes";r=0;')


async def test_every_answer_that_reached_the_application_carries_the_fields(make_api: Any) -> None:
    api: Api = await make_api(**SLOW)
    token = await api.create_application()
    # 404s after the application is known count and say so; a token that names none does not.
    missing = await api.client.get(f"/applications/{token}/chats/9")
    assert missing.status == 404 and fields(missing) == ('"reads";q=50;w=5000', '"reads";r=49;t=100')
    unknown = await api.client.get("/applications/nope/chats/9")
    assert unknown.status == 404 and "RateLimit" not in unknown.headers
    shown = await api.client.get(f"/applications/{token}")
    assert fields(shown)[1] == '"reads";r=48;t=200'
    for path, code in (("/healthz", 200), ("/openapi.json", 200)):
        answer = await api.client.get(path)
        assert answer.status == code and "RateLimit-Policy" not in answer.headers


async def test_searches_are_limited_apart(make_api: Any) -> None:
    api: Api = await make_api(**SLOW)
    token = await api.create_application()
    chat = await api.create_chat(token)
    await api.settle()
    path = f"/applications/{token}/chats/{chat}/messages/search?query=hello"
    statuses = [(await api.client.get(path)).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert (await api.client.get(f"/applications/{token}/chats/{chat}/messages")).status == 200


async def test_only_the_admin_overrides_and_an_override_applies_at_once(make_api: Any) -> None:
    api: Api = await make_api(**SLOW)
    token = await api.create_application()
    chat = await api.create_chat(token)
    while (await post_message(api, token, chat)).status == 201:
        pass
    limits = f"/applications/{token}/limits"
    raise_it = {"limits": {"writes_burst": 50, "writes_per_second": 10}}
    for refused in (await api.client.put(limits, json=raise_it), await api.client.delete(limits)):
        assert refused.status == 401 and (await refused.json())["error"]["code"] == "unauthorized"
    shown = await api.client.get(limits)  # the tenant may read its own
    assert shown.status == 200 and (await shown.json())["limits"]["writes_burst"] == 5
    changed = await api.client.put(limits, json=raise_it, headers=ADMIN)
    assert changed.status == 200, await changed.text()
    assert (await changed.json())["overridden"] == ["writes_burst", "writes_per_second"]
    admitted = await post_message(api, token, chat)
    assert admitted.status == 201 and fields(admitted)[0] == '"writes";q=50;w=5'

    bad = await api.client.put(limits, json={"limits": {"writes_burst": 0}}, headers=ADMIN)
    assert bad.status == 422 and (await bad.json())["error"]["code"] == "invalid_field"
    reset = await api.client.delete(limits, headers=ADMIN)
    assert reset.status == 200 and (await reset.json())["overridden"] == []
    assert (await post_message(api, token, chat)).status == 429  # the default again, and its bucket is spent


async def test_refusals_are_counted_and_logged_once_per_application(
    make_api: Any, caplog: pytest.LogCaptureFixture
) -> None:
    api: Api = await make_api(**SLOW)
    token = await api.create_application()
    chat = await api.create_chat(token)
    before = await _refused_count(api, "writes")
    with caplog.at_level(logging.WARNING, logger="chatd.limits.limiter"):
        statuses = [(await post_message(api, token, chat)).status for _ in range(10)]
    assert statuses.count(429) == 6
    assert await _refused_count(api, "writes") - before == 6
    lines = [record for record in caplog.records if record.getMessage() == "application over its rate limit"]
    assert len(lines) == 1 and lines[0].application_id and lines[0].policy == "writes"  # type: ignore[attr-defined]


async def _refused_count(api: Api, policy: str) -> float:
    text = await (await api.client.get("/metrics")).text()
    match = re.search(rf'^chatd_rate_limited_total\{{policy="{policy}"\}} ([0-9.e+]+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_live_streams_are_counted_while_open(make_api: Any) -> None:
    api: Api = await make_api(rate_streams=1)
    token = await api.create_application()
    path = f"/applications/{token}/events"
    first = await api.client.get(path)
    assert first.status == 200 and fields(first) == ('"streams";q=1;qu="concurrent-requests"', '"streams";r=0')
    second = await api.client.get(path)
    assert second.status == 429 and fields(second) == ('"streams";q=1;qu="concurrent-requests"', '"streams";r=0')
    assert second.headers["Retry-After"] == "1"
    first.close()  # the stream ends with its client; its slot is free again

    async def reopened() -> bool:
        third = await api.client.get(path)
        third.close()
        return third.status == 200

    from tests.factories import eventually

    await eventually(reopened, timeout=10)


async def test_limits_off_means_no_check_and_no_fields(make_api: Any) -> None:
    api: Api = await make_api(rate_limits=False, rate_writes_burst=1)
    token = await api.create_application()
    chat = await api.create_chat(token)
    answers = [await post_message(api, token, chat) for _ in range(3)]
    assert all(answer.status == 201 and "RateLimit" not in answer.headers for answer in answers)


async def test_a_refusal_is_held_before_it_is_answered(make_api: Any) -> None:
    import asyncio
    import time

    api: Api = await make_api(**SLOW, rate_refusal_hold_seconds=0.5)
    token = await api.create_application()
    chat = await api.create_chat(token)
    while (await post_message(api, token, chat)).status == 201:  # the last of these was held too
        pass
    started = time.monotonic()
    answers = await asyncio.gather(*(post_message(api, token, chat) for _ in range(20)))
    took = time.monotonic() - started
    assert all(answer.status == 429 for answer in answers)
    # Held together (not one after the other), each for half the hold to all of it (jittered).
    assert 0.25 <= took < 0.5 + 2.0, took
    assert api.service.limiter.held == 0
