"""Searching a chat's messages over HTTP."""

from __future__ import annotations

import pytest

from tests.conftest import Api


@pytest.fixture
async def chat(api: Api) -> str:
    token = await api.create_application()
    chat = await api.create_chat(token)
    other = await api.create_chat(token)
    for content in ("Hello, World!", "help me", "The helicopter landed", "nothing here"):
        await api.create_message(token, chat, content)
    await api.create_message(token, other, "hello from elsewhere")
    await api.settle()
    return f"/applications/{token}/chats/{chat}/messages/search"


@pytest.mark.parametrize(
    ("query", "numbers"),
    [
        ("hel", [1, 2, 3]),
        ("helo", [1, 2]),
        ("HELLO", [1]),
        ("world", [1]),
        ("zebra", []),
    ],
)
async def test_semantics(api: Api, chat: str, query: str, numbers: list[int]) -> None:
    body = await api.get_json(f"{chat}?query={query}")
    assert [m["message_number"] for m in body["messages"]] == numbers
    assert body["total"] == len(numbers)


async def test_response_shape_and_paging(api: Api, chat: str) -> None:
    body = await api.get_json(f"{chat}?query=hel&page=2&per_page=2")
    assert body["total"] == 3 and body["total_pages"] == 2 and body["page"] == 2 and body["per_page"] == 2
    assert body["messages"] == [
        {"message_number": 3, "content": "The helicopter landed", "created_at": body["messages"][0]["created_at"]}
    ]
    assert (await api.get_json(f"{chat}?query=hel"))["per_page"] == 20


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("", "missing_parameter"),
        ("query=", "missing_parameter"),
        ("query=%20", "missing_parameter"),
        ("query=a&per_page=101", "invalid_parameter"),
        ("query=a&page=0", "invalid_parameter"),
        ("query=" + "a" * 201, "invalid_parameter"),
    ],
)
async def test_bad_queries_are_400(api: Api, chat: str, query: str, code: str) -> None:
    response = await api.client.get(f"{chat}?{query}")
    assert response.status == 400
    assert (await response.json())["error"]["code"] == code


async def test_unknown_chat_is_404(api: Api, chat: str) -> None:
    response = await api.client.get(chat.replace("/chats/1/", "/chats/7/") + "?query=hello")
    assert response.status == 404
