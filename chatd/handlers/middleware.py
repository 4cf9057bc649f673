"""Request ids, metrics, and one place that turns every failure into a JSON error."""

from __future__ import annotations

import itertools
import logging
import os
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from chatd import metrics
from chatd.errors import BackendUnavailable, ChatdError
from chatd.handlers.render import error_response

logger = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


# A random prefix per process and a counter: unique across processes without a system call per
# request (getrandom() is one, and system calls are dear on virtual machines like ours).
_REQUEST_ID_PREFIX = os.urandom(8).hex()
_request_ids = (f"{_REQUEST_ID_PREFIX}{number:08x}" for number in itertools.count(1))


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-Id") or next(_request_ids)
    started = time.perf_counter()
    try:
        response = await handler(request)
    except ChatdError as exc:
        response = error_response(exc.status, exc.code, exc.message, exc.headers)
    except BackendUnavailable as exc:
        logger.warning("request %s: backend unavailable: %s", request_id, exc)
        response = error_response(503, "unavailable", "a backend is unavailable; retry shortly", {"Retry-After": "1"})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        response = error_response(exc.status, _HTTP_CODES.get(exc.status, "http_error"), exc.reason, headers)
    except Exception:
        logger.exception("request %s: %s %s failed", request_id, request.method, request.path)
        response = error_response(500, "internal_error", f"internal error (request id {request_id})")
    response.headers["X-Request-Id"] = request_id
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    metrics.request_counter(request.method, route, response.status).inc()
    metrics.request_timer(route).observe(time.perf_counter() - started)
    return response
