"""/applications over HTTP."""

from __future__ import annotations

import re

import pytest

from tests.conftest import Api


async def test_create_returns_a_secret_token(api: Api) -> None:
    response = await api.client.post("/applications", json={"application": {"name": "My Chat App"}})
    assert response.status == 201
    body = await response.json()
    assert body["name"] == "My Chat App" and body["chats_count"] == 0
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", body["token"])  # 24 random bytes: 192 bits
    assert response.headers["Location"] == f"/applications/{body['token']}"
    assert body["created_at"].endswith("Z")
    assert body["token"] != await api.create_application()


async def test_show_and_rename(api: Api) -> None:
    token = await api.create_application("Old")
    assert (await api.get_json(f"/applications/{token}"))["name"] == "Old"  # now cached
    for method, name in (("PUT", "New"), ("PATCH", "Newer")):
        response = await api.client.request(method, f"/applications/{token}", json={"application": {"name": name}})
        assert response.status == 200 and (await response.json())["name"] == name
        assert (await api.get_json(f"/applications/{token}"))["name"] == name  # cache invalidated at once


async def test_list_is_paginated(make_api) -> None:  # type: ignore[no-untyped-def]
    api = await make_api(admin_token="s3cret")
    tokens = [await api.create_application(f"App {n}") for n in range(3)]
    admin = {"Authorization": "Bearer s3cret"}
    response = await api.client.get("/applications?page=2&per_page=2", headers=admin)
    body = await response.json()
    assert [app["token"] for app in body["data"]] == tokens[2:]
    assert body["meta"] == {"page": 2, "per_page": 2, "total": 3, "total_pages": 2}
    body = await (await api.client.get("/applications", headers=admin)).json()
    assert body["meta"]["per_page"] == 20 and len(body["data"]) == 3


async def test_chats_count_follows_the_reconciler(api: Api) -> None:
    token = await api.create_application()
    for _ in range(3):
        await api.create_chat(token)
    await api.get_json(f"/applications/{token}")  # cache it with chats_count 0
    await api.settle()
    assert (await api.get_json(f"/applications/{token}"))["chats_count"] == 3


async def test_admin_token_guards_the_list(make_api) -> None:  # type: ignore[no-untyped-def]
    api = await make_api(admin_token="s3cret")
    response = await api.client.get("/applications")
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "unauthorized"
    response = await api.client.get("/applications", headers={"Authorization": "Bearer wrong"})
    assert response.status == 401
    response = await api.client.get("/applications", headers={"Authorization": "Bearer s3cret"})
    assert response.status == 200


async def test_unknown_token_is_404(api: Api) -> None:
    for method in ("GET", "PUT"):
        response = await api.client.request(method, "/applications/nope", json={"application": {"name": "x"}})
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "application_not_found"


BAD_BODIES = [
    (b"{bad json", 400, "malformed_json"),
    (b"", 400, "missing_body"),
    (b"[1, 2]", 400, "malformed_json"),
    (b'{"name": "flat"}', 422, "missing_field"),
    (b'{"application": "x"}', 422, "missing_field"),
    (b'{"application": {}}', 422, "missing_field"),
    (b'{"application": {"name": 5}}', 422, "invalid_field"),
    (b'{"application": {"name": null}}', 422, "invalid_field"),
    (b'{"application": {"name": "   "}}', 422, "invalid_field"),
    (b'{"application": {"name": "' + b"x" * 256 + b'"}}', 422, "invalid_field"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_BODIES)
async def test_bad_bodies_get_json_4xx(api: Api, body: bytes, status: int, code: str) -> None:
    response = await api.client.post("/applications", data=body, headers={"Content-Type": "application/json"})
    assert response.status == status
    assert response.content_type == "application/json"
    error = (await response.json())["error"]
    assert error["code"] == code and error["message"]


@pytest.mark.parametrize("query", ["page=0", "page=-1", "page=abc", "per_page=0", "per_page=101", "page=1.5"])
async def test_bad_paging_is_400(make_api, query: str) -> None:  # type: ignore[no-untyped-def]
    api = await make_api(open_listing=True)
    response = await api.client.get(f"/applications?{query}")
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "invalid_parameter"


async def test_oversized_body_is_413(api: Api) -> None:
    body = b'{"application": {"name": "' + b"x" * 100_000 + b'"}}'
    response = await api.client.post("/applications", data=body)
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "body_too_large"


async def test_unknown_route_and_method_are_json(api: Api) -> None:
    response = await api.client.get("/nowhere")
    assert response.status == 404 and (await response.json())["error"]["code"] == "not_found"
    response = await api.client.delete("/applications")
    assert response.status == 405 and (await response.json())["error"]["code"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]
