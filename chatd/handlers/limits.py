"""/applications/{token}/limits: an application's rate limits, which only the admin may change.

``GET`` shows the limits in force (the ``CHATD_RATE_*`` defaults with this application's
overrides) to the admin or to whoever holds the token. ``PUT`` replaces the overrides with
``{"limits": {"writes_per_second": 5, ...}}`` (a field left out, or null, takes its default)
and ``DELETE`` drops them all: both need ``Authorization: Bearer <admin token>``, so a tenant
can read its limits but never raise them. A change applies from the next request on the api
process that made it, and within a second on every other (``chatd.limits.book``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from chatd import keys
from chatd.errors import Unprocessable
from chatd.handlers import parsing, render
from chatd.handlers.applications import admin_if_asked, require_admin
from chatd.limits.policies import Limits, validate_overrides

routes = web.RouteTableDef()
PATH = "/applications/{token}/limits"


@routes.get(PATH)
async def show_limits(request: web.Request) -> web.Response:
    admin_if_asked(request, "reading rate limits")
    limits = await request.app[keys.SERVICE].limits(request.match_info["token"])
    return render.json_response(_shown(limits))


@routes.put(PATH)
async def set_limits(request: web.Request) -> web.Response:
    require_admin(request, "changing rate limits")
    data = await parsing.json_object(request)
    if set(data) != {"limits"}:
        raise Unprocessable('the body must look like {"limits": {"writes_per_second": 5, ...}}', code="missing_field")
    try:
        overrides = validate_overrides(data["limits"])
    except ValueError as exc:
        raise Unprocessable(str(exc), code="invalid_field") from None
    limits = await request.app[keys.SERVICE].set_limits(request.match_info["token"], overrides)
    return render.json_response(_shown(limits))


@routes.delete(PATH)
async def reset_limits(request: web.Request) -> web.Response:
    require_admin(request, "changing rate limits")
    limits = await request.app[keys.SERVICE].set_limits(request.match_info["token"], {})
    return render.json_response(_shown(limits))


def _shown(limits: Limits) -> dict[str, Any]:
    return {"limits": limits.values(), "overridden": sorted(limits.overrides)}
