"""/applications: create, list, show and rename tenants."""

from __future__ import annotations

import secrets

from aiohttp import web

from chatd import keys
from chatd.errors import Unauthorized
from chatd.handlers import parsing, render

routes = web.RouteTableDef()


@routes.post("/applications")
async def create_application(request: web.Request) -> web.Response:
    name = await parsing.application_name(request)
    app = await request.app[keys.SERVICE].create_application(name)
    return render.json_response(render.application(app), status=201, headers={"Location": f"/applications/{app.token}"})


@routes.get("/applications")
async def list_applications(request: web.Request) -> web.Response:
    _require_admin(request)
    page, per_page = parsing.paging(request)
    result = await request.app[keys.SERVICE].list_applications(page, per_page)
    return render.json_response(render.page(result, render.application))


@routes.get("/applications/{token}")
async def show_application(request: web.Request) -> web.Response:
    app = await request.app[keys.SERVICE].application(request.match_info["token"])
    return render.json_response(render.application(app))


@routes.put("/applications/{token}")
@routes.patch("/applications/{token}")
async def rename_application(request: web.Request) -> web.Response:
    name = await parsing.application_name(request)
    app = await request.app[keys.SERVICE].rename_application(request.match_info["token"], name)
    return render.json_response(render.application(app))


def _require_admin(request: web.Request) -> None:
    """Listing reveals every tenant's token: with an admin token configured, only admins may."""
    expected = request.app[keys.SETTINGS].admin_token
    if not expected:
        return
    given = request.headers.get("Authorization", "")
    if not secrets.compare_digest(given.encode(), f"Bearer {expected}".encode()):
        raise Unauthorized(
            "listing applications needs 'Authorization: Bearer <admin token>'", headers={"WWW-Authenticate": "Bearer"}
        )
