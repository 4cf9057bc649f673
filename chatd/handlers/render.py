"""JSON responses and the representations of domain records."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from chatd.domain import Application, Chat, CursorPage, Message, Page, SearchHit, SearchResult
from chatd.jobs import format_time


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def error_response(status: int, code: str, message: str, headers: Any = None) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status, headers)


def application(app: Application) -> dict[str, Any]:
    return {
        "id": app.id,
        "token": app.token,
        "name": app.name,
        "chats_count": app.chats_count,
        "created_at": format_time(app.created_at),
    }


def chat(record: Chat) -> dict[str, Any]:
    return {
        "number": record.number,
        "messages_count": record.messages_count,
        "created_at": format_time(record.created_at),
    }


def message(record: Message) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "number": record.number,
        "content": record.content,
        "created_at": format_time(record.created_at),
        "updated_at": format_time(record.updated_at),
    }
    if record.revision is not None:
        shown["revision"] = record.revision
    return shown


def listed_message(record: Message) -> dict[str, Any]:
    """A message in a cursor page: as in a ``page=`` list, without the revision the store read."""
    return {
        "number": record.number,
        "content": record.content,
        "created_at": format_time(record.created_at),
        "updated_at": format_time(record.updated_at),
    }


def page(result: Page[Any], render: Any) -> dict[str, Any]:
    return {
        "data": [render(item) for item in result.items],
        "meta": {
            "page": result.page,
            "per_page": result.per_page,
            "total": result.total,
            "total_pages": result.total_pages,
        },
    }


def cursor_page(result: CursorPage[Any], render: Any) -> dict[str, Any]:
    # No total: counting the whole chat on every page would cost what the cursor saves.
    return {
        "data": [render(item) for item in result.items],
        "meta": {"limit": result.limit, "after": result.after, "next_after": result.next_after},
    }


def next_link(request: web.Request, result: CursorPage[Any]) -> dict[str, str]:
    """The ``Link: <...>; rel="next"`` header of a cursor page (GitHub's style), or none on the last page.

    Relative to this server and keeping the other query parameters (``query``): a reference
    built from the Host header would point wherever a client's Host said.
    """
    if result.next_after is None:
        return {}
    url = request.rel_url.update_query(after=str(result.next_after), limit=str(result.limit))
    return {"Link": f'<{url}>; rel="next"'}


def search_hit(hit: SearchHit) -> dict[str, Any]:
    return {"message_number": hit.message_number, "content": hit.content, "created_at": format_time(hit.created_at)}


def search_cursor(result: CursorPage[SearchHit]) -> dict[str, Any]:
    return {
        "total": result.total,
        "limit": result.limit,
        "after": result.after,
        "next_after": result.next_after,
        "messages": [search_hit(hit) for hit in result.items],
    }


def search(result: SearchResult, page_number: int, per_page: int) -> dict[str, Any]:
    return {
        "total": result.total,
        "total_pages": Page(result.hits, page_number, per_page, result.total).total_pages,
        "page": page_number,
        "per_page": per_page,
        "messages": [search_hit(hit) for hit in result.hits],
    }
