"""Chats and messages over HTTP: numbering, asynchronous storage, reads, edits and bad input."""

from __future__ import annotations

import pytest

from tests.conftest import Api


async def test_chat_lifecycle(api: Api) -> None:
    token = await api.create_application()
    response = await api.client.post(f"/applications/{token}/chats")
    assert response.status == 201
    assert await response.json() == {"number": 1, "status": "processing"}
    assert response.headers["Location"] == f"/applications/{token}/chats/1"
    assert await api.create_chat(token) == 2
    # Accepted but not stored yet: a distinct 404 that says to retry.
    response = await api.client.get(f"/applications/{token}/chats/2")
    assert response.status == 404 and response.headers["Retry-After"] == "1"
    assert (await response.json())["error"]["code"] == "pending"
    await api.settle()
    chat = await api.get_json(f"/applications/{token}/chats/2")
    assert chat["number"] == 2 and chat["messages_count"] == 0 and chat["created_at"].endswith("Z")
    listing = await api.get_json(f"/applications/{token}/chats?per_page=1&page=2")
    assert [c["number"] for c in listing["data"]] == [2] and listing["meta"]["total"] == 2
    response = await api.client.get(f"/applications/{token}/chats/3")
    assert response.status == 404 and (await response.json())["error"]["code"] == "chat_not_found"


async def test_message_lifecycle(api: Api) -> None:
    token = await api.create_application()
    chat = await api.create_chat(token)
    response = await api.client.post(f"/applications/{token}/chats/{chat}/messages", json={"content": "Hello, World!"})
    assert response.status == 201 and await response.json() == {"number": 1}
    assert await api.create_message(token, chat, "second") == 2
    pending = await api.client.get(f"/applications/{token}/chats/{chat}/messages/2")
    assert pending.status == 404 and (await pending.json())["error"]["code"] == "pending"
    await api.settle()
    message = await api.get_json(f"/applications/{token}/chats/{chat}/messages/1")
    assert message["number"] == 1 and message["content"] == "Hello, World!"
    listing = await api.get_json(f"/applications/{token}/chats/{chat}/messages")
    assert [m["number"] for m in listing["data"]] == [1, 2] and listing["meta"]["total"] == 2
    assert (await api.get_json(f"/applications/{token}/chats/{chat}"))["messages_count"] == 2
    missing = await api.client.get(f"/applications/{token}/chats/{chat}/messages/3")
    assert (await missing.json())["error"]["code"] == "message_not_found"


async def test_edit_is_stored_and_reindexed(api: Api) -> None:
    token = await api.create_application()
    chat = await api.create_chat(token)
    await api.create_message(token, chat, "original words")
    await api.settle()
    base = f"/applications/{token}/chats/{chat}/messages"
    for method, content in (("PUT", "edited words"), ("PATCH", "patched words")):
        response = await api.client.request(method, f"{base}/1", json={"content": content})
        assert response.status == 200 and (await response.json())["content"] == content
    await api.settle()
    assert (await api.get_json(f"{base}/search?query=original"))["total"] == 0
    found = await api.get_json(f"{base}/search?query=patched")
    assert [m["content"] for m in found["messages"]] == ["patched words"]
    response = await api.client.put(f"{base}/9", json={"content": "x"})
    assert response.status == 404


async def test_unknown_chat_burns_no_number(api: Api) -> None:
    token = await api.create_application()
    response = await api.client.post(f"/applications/{token}/chats/1/messages", json={"content": "hi"})
    assert response.status == 404 and (await response.json())["error"]["code"] == "chat_not_found"
    chat = await api.create_chat(token)
    assert await api.create_message(token, chat, "first") == 1
    response = await api.client.post(f"/applications/{token}/messages", json={"content": "hi"})
    assert response.status == 404
    response = await api.client.post("/applications/nope/chats/1/messages", json={"content": "hi"})
    assert response.status == 404 and (await response.json())["error"]["code"] == "application_not_found"
    response = await api.client.post("/applications/nope/chats")
    assert response.status == 404


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"not json", 400, "malformed_json"),
        (b"", 400, "missing_body"),
        (b'"text"', 400, "malformed_json"),
        (b"{}", 422, "missing_field"),
        (b'{"content": ""}', 422, "invalid_field"),
        (b'{"content": "  "}', 422, "invalid_field"),
        (b'{"content": 42}', 422, "invalid_field"),
        (b'{"content": ["a"]}', 422, "invalid_field"),
        (b'{"content": "' + b"x" * 10_001 + b'"}', 422, "invalid_field"),
    ],
)
async def test_bad_message_bodies(api: Api, body: bytes, status: int, code: str) -> None:
    token = await api.create_application()
    chat = await api.create_chat(token)
    for method, path in (("POST", ""), ("PUT", "/1")):
        response = await api.client.request(method, f"/applications/{token}/chats/{chat}/messages{path}", data=body)
        assert response.status == status
        assert (await response.json())["error"]["code"] == code
    # No bad request took a number.
    assert await api.create_message(token, chat, "good") == 1


@pytest.mark.parametrize(
    "path",
    [
        "chats/abc",
        "chats/0",
        "chats/-1",
        "chats/1.5",
        "chats/99999999999999999999",
        "chats/abc/messages",
        "chats/1/messages/x",
        "chats/١",
    ],
)
async def test_non_integer_path_numbers_are_400(api: Api, path: str) -> None:
    token = await api.create_application()
    await api.create_chat(token)
    response = await api.client.get(f"/applications/{token}/{path}")
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "invalid_parameter"


async def test_idempotency_key_makes_retries_safe(api: Api) -> None:
    token = await api.create_application()
    headers = {"Idempotency-Key": "chat-create-1"}
    first = await api.client.post(f"/applications/{token}/chats", headers=headers)
    again = await api.client.post(f"/applications/{token}/chats", headers=headers)
    assert (await first.json())["number"] == (await again.json())["number"] == 1
    assert await api.create_chat(token) == 2
    path = f"/applications/{token}/chats/1/messages"
    numbers = set()
    for _ in range(3):
        response = await api.client.post(path, json={"content": "once"}, headers={"Idempotency-Key": "m-1"})
        numbers.add((await response.json())["number"])
    assert numbers == {1}
    await api.settle()
    assert (await api.get_json(f"{path}"))["meta"]["total"] == 1
