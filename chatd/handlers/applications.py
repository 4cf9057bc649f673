"""/applications: create, list, show and rename tenants."""

from __future__ import annotations

import ipaddress
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
    """Listing reveals every tenant's token: only admins may, except on a loopback-only server.

    Without ``CHATD_ADMIN_TOKEN`` the list is open on 127.0.0.1 (``make run`` stays easy) and
    closed on any other address, where anyone who reaches the port would read every token.
    """
    settings = request.app[keys.SETTINGS]
    expected = settings.admin_token
    if not expected:
        if _is_loopback(settings.host):
            return
        raise Unauthorized(
            "listing applications is closed on a server reachable from other hosts: set CHATD_ADMIN_TOKEN and"
            " send 'Authorization: Bearer <admin token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # Header bytes that are not UTF-8 reach us as surrogates: they can only be a wrong token.
    given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    if not secrets.compare_digest(given, f"Bearer {expected}".encode()):
        raise Unauthorized(
            "listing applications needs 'Authorization: Bearer <admin token>'", headers={"WWW-Authenticate": "Bearer"}
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, or "" (every address)
        return False
