"""/applications/{token}/chats: create (asynchronously), list and show chats."""

from __future__ import annotations

from aiohttp import web

from chatd import keys, metrics
from chatd.handlers import parsing, render

routes = web.RouteTableDef()


@routes.post("/applications/{token}/chats")
async def create_chat(request: web.Request) -> web.Response:
    token = request.match_info["token"]
    number = await request.app[keys.SERVICE].create_chat(token, parsing.idempotency_key(request))
    metrics.numbers("chat").inc()
    return render.json_response(
        {"number": number, "status": "processing"},
        status=201,
        headers={"Location": f"/applications/{token}/chats/{number}"},
    )


@routes.get("/applications/{token}/chats")
async def list_chats(request: web.Request) -> web.Response:
    token = request.match_info["token"]
    cursor = parsing.cursor(request)
    if cursor is not None:
        after = await request.app[keys.SERVICE].list_chats_after(token, cursor.after, cursor.limit)
        return render.json_response(render.cursor_page(after, render.chat), headers=render.next_link(request, after))
    page, per_page = parsing.paging(request)
    result = await request.app[keys.SERVICE].list_chats(token, page, per_page)
    return render.json_response(render.page(result, render.chat))


@routes.get("/applications/{token}/chats/{chat}")
async def show_chat(request: web.Request) -> web.Response:
    number = parsing.path_number(request, "chat")
    chat = await request.app[keys.SERVICE].chat(request.match_info["token"], number)
    return render.json_response(render.chat(chat))
