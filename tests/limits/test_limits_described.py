"""The limits' answers match chatd/openapi.yaml: the 429, its fields, and /applications/{token}/limits."""

from __future__ import annotations

from typing import Any

from tests.api.test_openapi import conforming, expect
from tests.conftest import Api

ADMIN = {"Authorization": "Bearer s3cret"}


async def test_limit_answers_match_the_description(make_api: Any) -> None:
    api: Api = await make_api(admin_token="s3cret", rate_writes_per_second=0.01, rate_writes_burst=1, rate_streams=0)
    token = await api.create_application()
    base = f"/applications/{token}"
    await expect(api, "POST", f"{base}/chats", 201)
    refused = await api.client.post(f"{base}/chats")
    assert refused.status == 429
    assert (await conforming(refused))["error"]["code"] == "rate_limited"
    await expect(api, "POST", f"{base}/chats/1/messages", 429, "rate_limited", json={"content": "x"})
    await expect(api, "GET", f"{base}/events", 429, "rate_limited")  # no stream allowed at all

    shown = await expect(api, "GET", f"{base}/limits", 200)
    assert shown["limits"]["writes_burst"] == 1 and shown["overridden"] == []
    await expect(api, "PUT", f"{base}/limits", 401, "unauthorized", json={"limits": {}})
    await expect(api, "DELETE", f"{base}/limits", 401, "unauthorized")
    body = {"limits": {"writes_burst": 10, "streams": 2, "reads_per_second": 0.5}}
    changed = await expect(api, "PUT", f"{base}/limits", 200, json=body, headers=ADMIN)
    assert changed["overridden"] == ["reads_per_second", "streams", "writes_burst"]
    for bad in ({"limits": {"writes_burst": -1}}, {"limits": {"nope": 1}}, {"limits": 3}, {"other": {}}):
        await expect(api, "PUT", f"{base}/limits", 422, json=bad, headers=ADMIN)
    await expect(api, "PUT", f"{base}/limits", 400, "malformed_json", data=b"{", headers=ADMIN)
    await expect(api, "PUT", "/applications/nope/limits", 404, "application_not_found", json=body, headers=ADMIN)
    assert (await expect(api, "DELETE", f"{base}/limits", 200, headers=ADMIN))["overridden"] == []
