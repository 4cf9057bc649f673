"""Cursor paging (``after``/``limit``) of chat lists, message lists and search, beside ``page``/``per_page``."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from yarl import URL

from tests.api.test_openapi import conforming
from tests.conftest import Api

MESSAGES = 250


async def _chat_of(api: Api, count: int) -> tuple[str, int]:
    token = await api.create_application()
    chat = await api.create_chat(token)
    # Posted concurrently to keep the test quick; numbers still go 1..count, one each.
    numbers = await asyncio.gather(*(api.create_message(token, chat, "hello there") for _ in range(count)))
    assert sorted(numbers) == list(range(1, count + 1))
    await api.settle()
    # Every third message edited not to match "hello", so search pages differ from list pages.
    for number in range(3, count + 1, 3):
        await _edit(api, token, chat, number)
    await api.settle()
    await api.service.search_index.refresh()
    return token, chat


async def _edit(api: Api, token: str, chat: int, number: int) -> None:
    path = f"/applications/{token}/chats/{chat}/messages/{number}"
    response = await api.client.put(path, json={"content": "goodbye for now"})
    assert response.status == 200, await response.text()


def _next_link(response: Any) -> str | None:
    header = response.headers.get("Link")
    if header is None:
        return None
    match = re.fullmatch(r'<([^>]+)>; rel="next"', header)
    assert match is not None, header
    return match.group(1)


async def _walk(api: Api, path: str) -> list[dict[str, Any]]:
    """Follow the Link headers from ``path`` to the last page; every page's body, in order."""
    bodies = []
    url: str | None = path
    while url is not None:
        response = await api.client.get(url)
        assert response.status == 200, await response.text()
        body = await conforming(response)  # every cursor page as the OpenAPI description says
        bodies.append(body)
        next_after = body["meta"]["next_after"] if "meta" in body else body["next_after"]
        url = _next_link(response)
        assert (url is None) == (next_after is None)
        if url is not None:
            assert f"after={next_after}" in url
    return bodies


async def test_walking_messages_returns_each_once_in_order(api: Api) -> None:
    token, chat = await _chat_of(api, MESSAGES)
    pages = await _walk(api, f"/applications/{token}/chats/{chat}/messages?limit=100")
    assert len(pages) == 3
    assert [page["meta"] for page in pages] == [
        {"limit": 100, "after": 0, "next_after": 100},
        {"limit": 100, "after": 100, "next_after": 200},
        {"limit": 100, "after": 200, "next_after": None},
    ]
    numbers = [message["number"] for page in pages for message in page["data"]]
    assert numbers == list(range(1, MESSAGES + 1))
    assert [m["content"] for m in pages[2]["data"][-2:]] == ["goodbye for now", "hello there"]
    # Offset paging answers as before, total included.
    old = await api.get_json(f"/applications/{token}/chats/{chat}/messages?page=3&per_page=100")
    assert old["meta"] == {"page": 3, "per_page": 100, "total": MESSAGES, "total_pages": 3}
    assert [m["number"] for m in old["data"]] == list(range(201, MESSAGES + 1))


async def test_search_by_cursor_equals_search_by_pages(api: Api) -> None:
    token, chat = await _chat_of(api, MESSAGES)
    base = f"/applications/{token}/chats/{chat}/messages/search?query=helo"
    by_pages: list[int] = []
    for page in (1, 2):
        body = await api.get_json(f"{base}&page={page}&per_page=100")
        by_pages += [hit["message_number"] for hit in body["messages"]]
        total = body["total"]
    pages = await _walk(api, f"{base}&limit=100")
    by_cursor = [hit["message_number"] for page in pages for hit in page["messages"]]
    expected = [n for n in range(1, MESSAGES + 1) if n % 3]
    assert by_cursor == by_pages == expected
    assert len(pages) == 2 and {page["total"] for page in pages} == {total} == {len(expected)}
    assert pages[-1]["next_after"] is None


async def test_link_keeps_the_query_and_the_last_page_has_none(api: Api) -> None:
    token = await api.create_application()
    chat = await api.create_chat(token)
    for _ in range(3):
        await api.create_message(token, chat, "hello there")
    await api.settle()
    await api.service.search_index.refresh()
    response = await api.client.get(f"/applications/{token}/chats/{chat}/messages/search?query=hello%20there&limit=2")
    assert response.status == 200
    link = _next_link(response)
    assert link is not None
    url = URL(link)
    assert url.path == f"/applications/{token}/chats/{chat}/messages/search"
    assert dict(url.query) == {"query": "hello there", "limit": "2", "after": "2"}
    last = await api.client.get(link)
    assert (await last.json())["messages"][0]["message_number"] == 3
    assert "Link" not in last.headers
    # Exactly a full last page: the extra row read tells there is nothing more.
    exact = await api.client.get(f"/applications/{token}/chats/{chat}/messages?limit=3")
    assert (await exact.json())["meta"]["next_after"] is None and "Link" not in exact.headers


async def test_walking_chats(api: Api) -> None:
    token = await api.create_application()
    for _ in range(5):
        await api.create_chat(token)
    await api.settle()
    pages = await _walk(api, f"/applications/{token}/chats?limit=2")
    assert [[chat["number"] for chat in page["data"]] for page in pages] == [[1, 2], [3, 4], [5]]
    assert "total" not in pages[0]["meta"]
    empty = await api.get_json(f"/applications/{token}/chats?after=5")
    assert empty == {"data": [], "meta": {"limit": 20, "after": 5, "next_after": None}}


@pytest.mark.parametrize(
    "query",
    [
        "after=1&page=2",
        "limit=5&per_page=5",
        "after=0&per_page=5",
        "limit=5&page=1",
        "after=-1",
        "after=abc",
        "after=1.5",
        "after=1234567890123456789",
        "limit=0",
        "limit=101",
        "limit=ten",
    ],
)
async def test_bad_or_mixed_paging_is_a_400(api: Api, query: str) -> None:
    token = await api.create_application()
    chat = await api.create_chat(token)
    for path in (
        f"/applications/{token}/chats",
        f"/applications/{token}/chats/{chat}/messages",
        f"/applications/{token}/chats/{chat}/messages/search?query=hi",
    ):
        separator = "&" if "?" in path else "?"
        response = await api.client.get(f"{path}{separator}{query}")
        assert response.status == 400, await response.text()
        assert (await conforming(response))["error"]["code"] == "invalid_parameter"


async def test_cursor_on_an_unknown_chat_is_a_404(api: Api) -> None:
    token = await api.create_application()
    body = await api.get_json(f"/applications/{token}/chats/7/messages?after=0", status=404)
    assert body["error"]["code"] == "chat_not_found"
