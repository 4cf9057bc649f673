"""/applications: create, list, show and rename tenants.

Who may do what without a tenant's token:

- list (``GET /applications``, every tenant's token): the admin, with ``Authorization: Bearer
  <CHATD_ADMIN_TOKEN>``. Without an admin token the listing is closed on every address, unless
  ``CHATD_OPEN_LISTING=1`` opens it for development. Where chatd listens says nothing about who
  asks: behind a gateway on the same host every client arrives from 127.0.0.1.
- create (``POST /applications``): anyone, or only the admin with
  ``CHATD_ADMIN_CREATES_APPLICATIONS=1`` (which needs an admin token).
"""

from __future__ import annotations

import logging
import secrets

from aiohttp import web

from chatd import keys
from chatd.errors import Unauthorized
from chatd.handlers import parsing, render
from chatd.settings import Settings

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()

_HOW_TO_OPEN = (
    "set CHATD_ADMIN_TOKEN and send 'Authorization: Bearer <admin token>'"
    " (or, for development only, CHATD_OPEN_LISTING=1)"
)


@routes.post("/applications")
async def create_application(request: web.Request) -> web.Response:
    if request.app[keys.SETTINGS].admin_creates_applications:
        require_admin(request, "creating an application")
    name = await parsing.application_name(request)
    app = await request.app[keys.SERVICE].create_application(name)
    return render.json_response(render.application(app), status=201, headers={"Location": f"/applications/{app.token}"})


@routes.get("/applications")
async def list_applications(request: web.Request) -> web.Response:
    settings = request.app[keys.SETTINGS]
    if settings.admin_token or not settings.open_listing:
        require_admin(request, "listing applications")
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


def require_admin(request: web.Request, what: str) -> None:
    """401 unless the request carries ``Authorization: Bearer <CHATD_ADMIN_TOKEN>``.

    Always 401 when no admin token is configured. The comparison takes the same time
    wherever the given header first differs.
    """
    expected = request.app[keys.SETTINGS].admin_token
    if not expected:
        raise Unauthorized(f"{what} is closed on this server: {_HOW_TO_OPEN}", headers={"WWW-Authenticate": "Bearer"})
    # Header bytes that are not UTF-8 reach us as surrogates: they can only be a wrong token.
    given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    if not secrets.compare_digest(given, f"Bearer {expected}".encode()):
        raise Unauthorized(
            f"{what} needs 'Authorization: Bearer <admin token>'", headers={"WWW-Authenticate": "Bearer"}
        )


def warn_about_access(settings: Settings) -> None:
    """Say once, at start, when the listing is closed to everyone or open to anyone."""
    if settings.admin_token:
        if settings.open_listing:
            logger.warning("CHATD_OPEN_LISTING is ignored: with CHATD_ADMIN_TOKEN set, listing needs the admin token")
        return
    if settings.open_listing:
        logger.warning(
            "CHATD_OPEN_LISTING=1: GET /applications lists every tenant's token to anyone who reaches this server"
            " (development only; set CHATD_ADMIN_TOKEN instead in production)"
        )
    else:
        logger.warning("GET /applications answers 401 to everyone: to list applications, %s", _HOW_TO_OPEN)
