"""/healthz, /readyz and /metrics: served by every role.

``/readyz`` tells whoever asks only which backend answers (``ok``) and which does not
(``unavailable``); why not (a host name, an address, a driver's message) goes to the log at
WARNING. Behind the gateway every peer is loopback, so the peer's address cannot tell the
operator from the public; the operator reads the log, or runs ``chatd check`` on the host.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from chatd import backlog, keys
from chatd.handlers import render

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()
READY_TIMEOUT = 2.0
OK, UNAVAILABLE = "ok", "unavailable"


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return render.json_response({"status": "ok", "role": request.app[keys.SETTINGS].role})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Every backend this process uses answers within a bound: ``ok`` or ``unavailable`` each."""
    backends = request.app[keys.BACKENDS].all()
    results = await asyncio.gather(*(_check(backend) for backend in backends))
    checks = {backend.name: result for backend, result in zip(backends, results)}
    ready = all(result == OK for result in checks.values())
    return render.json_response(
        {"status": "ready" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )


async def _check(backend) -> str:  # type: ignore[no-untyped-def]
    try:
        await asyncio.wait_for(backend.ping(), READY_TIMEOUT)
    except Exception as exc:  # any failure means not ready; the reason is for the operator only
        reason = str(exc)[:300] or f"no answer within {READY_TIMEOUT} s"
        logger.warning("readiness: %s is unavailable: %s: %s", backend.name, type(exc).__name__, reason)
        return UNAVAILABLE
    return OK


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """This process's metrics; queue depths and backend health sampled now (``chatd.backlog``)."""
    await backlog.sample(request.app[keys.BACKENDS])
    response = web.Response(body=generate_latest())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
