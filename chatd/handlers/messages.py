"""/applications/{token}/chats/{chat}/messages: create, list, show, edit and search."""

from __future__ import annotations

from aiohttp import web

from chatd import keys, metrics
from chatd.errors import BadRequest
from chatd.handlers import parsing, render
from chatd.searching import MAX_QUERY_CHARS

routes = web.RouteTableDef()
BASE = "/applications/{token}/chats/{chat}/messages"


async def _content(request: web.Request) -> str:
    data = await parsing.json_object(request)
    return parsing.text_field(data, "content", request.app[keys.SETTINGS].max_content_chars)


@routes.post(BASE)
async def create_message(request: web.Request) -> web.Response:
    token = request.match_info["token"]
    chat = parsing.path_number(request, "chat")
    content = await _content(request)
    number = await request.app[keys.SERVICE].create_message(token, chat, content, parsing.idempotency_key(request))
    metrics.numbers("message").inc()
    return render.json_response(
        {"number": number}, status=201, headers={"Location": f"/applications/{token}/chats/{chat}/messages/{number}"}
    )


@routes.get(BASE)
async def list_messages(request: web.Request) -> web.Response:
    chat = parsing.path_number(request, "chat")
    token = request.match_info["token"]
    cursor = parsing.cursor(request)
    if cursor is not None:
        after = await request.app[keys.SERVICE].list_messages_after(token, chat, cursor.after, cursor.limit)
        return render.json_response(
            render.cursor_page(after, render.listed_message), headers=render.next_link(request, after)
        )
    page, per_page = parsing.paging(request)
    result = await request.app[keys.SERVICE].list_messages(token, chat, page, per_page)
    return render.json_response(render.page(result, render.message))


# Registered before "/messages/{message}" so that "search" is never read as a message number.
@routes.get(BASE + "/search")
async def search_messages(request: web.Request) -> web.Response:
    chat = parsing.path_number(request, "chat")
    query = request.query.get("query", "")
    if not query.strip():
        raise BadRequest("'query' is required", code="missing_parameter")
    if len(query) > MAX_QUERY_CHARS:
        raise BadRequest(f"'query' must be at most {MAX_QUERY_CHARS} characters", code="invalid_parameter")
    token = request.match_info["token"]
    cursor = parsing.cursor(request)
    if cursor is not None:
        after = await request.app[keys.SERVICE].search_after(token, chat, query, cursor.after, cursor.limit)
        return render.json_response(render.search_cursor(after), headers=render.next_link(request, after))
    page, per_page = parsing.paging(request)
    result = await request.app[keys.SERVICE].search(token, chat, query, page, per_page)
    return render.json_response(render.search(result, page, per_page))


@routes.get(BASE + "/{message}")
async def show_message(request: web.Request) -> web.Response:
    chat = parsing.path_number(request, "chat")
    number = parsing.path_number(request, "message")
    message = await request.app[keys.SERVICE].message(request.match_info["token"], chat, number)
    return render.json_response(render.message(message))


@routes.put(BASE + "/{message}")
@routes.patch(BASE + "/{message}")
async def edit_message(request: web.Request) -> web.Response:
    chat = parsing.path_number(request, "chat")
    number = parsing.path_number(request, "message")
    content = await _content(request)
    message = await request.app[keys.SERVICE].edit_message(request.match_info["token"], chat, number, content)
    return render.json_response(render.message(message))
