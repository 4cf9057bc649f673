"""Hostile and careless clients around tokens, admin listing, edits and idempotency keys (issue 11).

Each runs on both backend sets.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import Api


async def test_a_non_utf8_authorization_header_is_a_401_not_a_500(make_api) -> None:  # type: ignore[no-untyped-def]
    api: Api = await make_api(admin_token="s3cret")
    url = api.client.make_url("/")
    for raw in (b"Bearer \xff\xfe", b"\xc3\x28", b"Bearer s3cret\x80"):
        # Raw bytes on the socket: an HTTP client library would encode the header itself.
        reader, writer = await asyncio.open_connection(url.host, url.port)
        writer.write(
            b"GET /applications HTTP/1.1\r\nHost: chatd\r\nAuthorization: " + raw + b"\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        status_line, _, body = answer.partition(b"\r\n")
        assert status_line.split()[1] == b"401", answer[:300]
        assert b'"unauthorized"' in body


@pytest.mark.parametrize("suffix", ["%20", "%20%20", "%09", "%00", ".", "%C3%A9"])
async def test_a_token_matches_only_exactly(api: Api, suffix: str) -> None:
    token = await api.create_application("Exact")
    response = await api.client.get(f"/applications/{token}{suffix}")
    assert response.status == 404, await response.text()
    assert (await response.json())["error"]["code"] == "application_not_found"
    renamed = await api.client.put(f"/applications/{token}{suffix}", json={"application": {"name": "Other"}})
    assert renamed.status == 404
    assert (await api.get_json(f"/applications/{token}"))["name"] == "Exact"


async def test_listing_is_closed_on_every_address_without_an_admin_token(make_api) -> None:  # type: ignore[no-untyped-def]
    # Behind nginx on the same host every client is loopback: the address opens nothing (issue 22).
    for host in ("127.0.0.1", "0.0.0.0"):
        closed: Api = await make_api(host=host)
        response = await closed.client.get("/applications")
        assert response.status == 401
        assert "CHATD_ADMIN_TOKEN" in (await response.json())["error"]["message"]
    development: Api = await make_api(host="127.0.0.1", open_listing=True)
    assert (await development.client.get("/applications")).status == 200  # make run stays easy
    guarded: Api = await make_api(host="0.0.0.0", admin_token="s3cret")
    assert (await guarded.client.get("/applications", headers={"Authorization": "Bearer s3cret"})).status == 200


async def test_concurrent_edits_each_answer_with_what_they_wrote(api: Api) -> None:
    token = await api.create_application()
    chat = await api.create_chat(token)
    number = await api.create_message(token, chat, "original")
    await api.settle()
    url = f"/applications/{token}/chats/{chat}/messages/{number}"

    async def edit(n: int) -> dict:  # type: ignore[type-arg]
        response = await api.client.put(url, json={"content": f"edit {n}"})
        assert response.status == 200, await response.text()
        return await response.json()  # type: ignore[no-any-return]

    answers = await asyncio.gather(*(edit(n) for n in range(30)))
    assert [answer["content"] for answer in answers] == [f"edit {n}" for n in range(30)]
    assert sorted(answer["revision"] for answer in answers) == list(range(2, 32))  # each its own revision
    final = await api.get_json(url)
    assert final["content"] == next(a["content"] for a in answers if a["revision"] == 31)


async def test_an_idempotency_key_reused_for_another_request_is_refused(api: Api) -> None:
    token = await api.create_application()
    first_chat, other_chat = await api.create_chat(token), await api.create_chat(token)
    url = f"/applications/{token}/chats/{first_chat}/messages"
    key = {"Idempotency-Key": "pay-once"}
    first = await api.client.post(url, json={"content": "first"}, headers=key)
    assert first.status == 201
    again = await api.client.post(url, json={"content": "first"}, headers=key)
    assert (again.status, (await again.json())["number"]) == (201, (await first.json())["number"])
    for reuse in (
        api.client.post(url, json={"content": "changed"}, headers=key),  # another body
        api.client.post(f"/applications/{token}/chats/{other_chat}/messages", json={"content": "first"}, headers=key),
        api.client.post(f"/applications/{token}/chats", headers=key),  # another kind of request
    ):
        response = await reuse
        assert response.status == 422, await response.text()
        assert (await response.json())["error"]["code"] == "idempotency_key_reused"
    await api.settle()
    listing = await api.get_json(f"{url}?per_page=100")
    assert [m["content"] for m in listing["data"]] == ["first"]  # nothing else was created
