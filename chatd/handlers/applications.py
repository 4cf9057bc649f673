"""/applications: create, list, show and rename tenants; rotate and revoke their tokens.

Who may do what without a tenant's token:

- list (``GET /applications``, every tenant's token): the admin, with ``Authorization: Bearer
  <CHATD_ADMIN_TOKEN>``. Without an admin token the listing is closed on every address, unless
  ``CHATD_OPEN_LISTING=1`` opens it for development. Where chatd listens says nothing about who
  asks: behind a gateway on the same host every client arrives from 127.0.0.1.
- create (``POST /applications``): anyone, or only the admin with
  ``CHATD_ADMIN_CREATES_APPLICATIONS=1`` (which needs an admin token).
- rotate a token (``POST /applications/{token}/tokens``) and revoke the previous one
  (``DELETE /applications/{token}/tokens/previous``): whoever holds the current token, or the
  admin with it. The previous token, still working in its grace period, cannot: it would hand
  its holder the new one.
"""

from __future__ import annotations

import logging
import secrets

from aiohttp import web

from chatd import keys
from chatd.errors import Unauthorized
from chatd.handlers import parsing, render
from chatd.jobs import format_time
from chatd.settings import Settings

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()

# How long a rotated-away token keeps working unless the rotation says otherwise: a day.
DEFAULT_GRACE_SECONDS = 86_400

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
    app = await request.app[keys.SERVICE].show_application(request.match_info["token"])
    return render.json_response(render.application(app))


@routes.put("/applications/{token}")
@routes.patch("/applications/{token}")
async def rename_application(request: web.Request) -> web.Response:
    name = await parsing.application_name(request)
    app = await request.app[keys.SERVICE].rename_application(request.match_info["token"], name)
    return render.json_response(render.application(app))


@routes.post("/applications/{token}/tokens")
async def rotate_token(request: web.Request) -> web.Response:
    """A new token; the one in the path keeps working ``grace_seconds`` more (0: revoked now)."""
    admin_if_asked(request, "rotating a token")
    settings = request.app[keys.SETTINGS]
    grace = await parsing.grace_seconds(request, DEFAULT_GRACE_SECONDS, settings.max_token_grace_seconds)
    rotated, expires_at = await request.app[keys.SERVICE].rotate_token(request.match_info["token"], grace)
    new = rotated.application.token
    return render.json_response(
        {"token": new, "previous_token_expires_at": format_time(expires_at)},
        status=201,
        headers={"Location": f"/applications/{new}"},
    )


@routes.delete("/applications/{token}/tokens/previous")
async def revoke_previous_token(request: web.Request) -> web.Response:
    """The previous token stops working now (204, also when there is none)."""
    admin_if_asked(request, "revoking a token")
    await request.app[keys.SERVICE].revoke_previous_token(request.match_info["token"])
    return web.Response(status=204)


def admin_if_asked(request: web.Request, what: str) -> None:
    """A request that sends an ``Authorization`` header must send the admin token in it.

    The current token in the path is the tenant's own credential; the admin may act with it too
    (a tenant who lost control of it asks the operator), and a wrong admin token is refused.
    """
    if "Authorization" in request.headers:
        require_admin(request, what)


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
