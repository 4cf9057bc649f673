"""Rate limits while Redis is down (real set): fail open to a local limit, never a 500.

The api's Redis is a private server the test stops. Requests go on (the cache skips, the limit
check falls back to this process's own buckets), a tenant past its limit is still refused by
the local bucket, and when Redis is back the shared buckets count again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Api
from tests.factories import eventually
from tests.servers import PrivateRedis, running

pytestmark = pytest.mark.real


@pytest.fixture
def backend_set() -> str:
    return "real"


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    async with running(PrivateRedis(tmp_path)) as server:
        yield server  # type: ignore[misc]


async def test_redis_down_fails_open_to_a_local_limit(make_api: Any, redis: PrivateRedis) -> None:
    api: Api = await make_api(redis_url=redis.url, rate_writes_per_second=0.01, rate_writes_burst=4)
    token = await api.create_application()
    chat = await api.create_chat(token)  # one write counted in Redis
    path = f"/applications/{token}/chats/{chat}/messages"
    await redis.stop()
    statuses = []
    for _ in range(6):
        response = await api.client.post(path, json={"content": "while Redis is down"})
        statuses.append(response.status)
        assert "RateLimit" in response.headers
    # The local bucket starts full: 4 admitted, then refused; nothing failed.
    assert statuses == [201, 201, 201, 201, 429, 429], statuses
    other = await api.create_application("another")  # another tenant still creates
    await api.create_chat(other)

    await redis.start()

    async def shared_again() -> bool:
        # Past the 5 s cooldown the checks go to Redis again, where this tenant's bucket holds 1 write.
        response = await api.client.post(path, json={"content": "Redis is back"})
        assert response.status in (201, 429)
        return response.status == 201 and response.headers["RateLimit"].startswith('"writes";r=2;')

    await eventually(shared_again, timeout=20, interval=0.5)
