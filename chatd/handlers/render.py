"""JSON responses and the representations of domain records."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from chatd.domain import Application, Chat, Message, Page, SearchResult
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


def search(result: SearchResult, page_number: int, per_page: int) -> dict[str, Any]:
    return {
        "total": result.total,
        "total_pages": Page(result.hits, page_number, per_page, result.total).total_pages,
        "page": page_number,
        "per_page": per_page,
        "messages": [
            {"message_number": hit.message_number, "content": hit.content, "created_at": format_time(hit.created_at)}
            for hit in result.hits
        ],
    }
