"""Request ids, metrics, and one place that turns every failure into a JSON error."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time

from aiohttp import StreamReader, web
from aiohttp.typedefs import Handler

from chatd import keys, logs, metrics
from chatd.errors import BackendUnavailable, ChatdError
from chatd.handlers import headers
from chatd.handlers.render import error_response
from chatd.limits import policies

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


# Not an HTTP status: the client went away before an answer (counted as NGINX does).
CLIENT_CLOSED = 499


class BodyTimeout(asyncio.TimeoutError):
    """The request body did not arrive whole in time.

    A TimeoutError so that aiohttp, draining the unread rest of the body after the response
    ("lingering close"), takes it as the end of the wait rather than an unhandled error.
    """


def lift_deadline(request: web.Request) -> None:
    """No deadline for the rest of this request (a live stream, once it is open)."""
    deadline = request.get(keys.REQUEST_DEADLINE)
    if deadline is not None:
        request.app[keys.DEADLINES].lift(deadline)


def _expire_body(payload: StreamReader) -> None:
    if not payload.is_eof():
        payload.set_exception(BodyTimeout())


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-Id") or next(_request_ids)
    started = time.perf_counter()
    logs.application_id.set(None)  # a keep-alive connection runs its requests in one task
    policies.current.set(None)
    payload = request.content
    # A small body arrives with its headers and is complete here: only a body still on its way
    # (large, slow, or stalled) pays for a timer.
    settings = request.app[keys.SETTINGS]
    body_timer = None
    budget = settings.request_deadline_seconds
    if not payload.is_eof():
        body_timer = asyncio.get_running_loop().call_later(settings.body_timeout_seconds, _expire_body, payload)
        budget += settings.body_timeout_seconds  # the deadline counts from the body's arrival
    deadlines = request.app[keys.DEADLINES]
    deadline = request[keys.REQUEST_DEADLINE] = deadlines.start(budget)
    expired = False
    try:
        try:
            response = await handler(request)
        finally:
            expired = deadlines.end(deadline)
    except asyncio.CancelledError:
        if not expired:
            raise  # the client went away, or the server is shutting down
        logger.warning("request %s: no answer within the %g s deadline", request_id, budget)
        response = error_response(
            503,
            "unavailable",
            f"no answer within the request deadline ({budget:g} s); retry shortly",
            {"Retry-After": "1"},
        )
    except BodyTimeout:
        logger.info("request %s: the body did not arrive in time", request_id)
        response = error_response(408, "request_timeout", "the request body did not arrive in time")
        response.force_close()  # the rest of the body would be read as the next request
    except ConnectionResetError:
        if request.transport is not None:  # a backend's connection was reset, not the client's
            logger.exception("request %s: %s %s failed", request_id, request.method, _route(request))
            response = error_response(500, "internal_error", f"internal error (request id {request_id})")
        else:
            # The client closed the connection mid-request (usually mid-body): no one to answer.
            logger.info("request %s: the client disconnected before the answer", request_id)
            response = error_response(CLIENT_CLOSED, "client_closed", "the client closed the connection")
    except web.RequestPayloadError:
        # A body the parser refused part-way (bad chunk size, bad compressed data).
        response = error_response(400, "malformed_body", "the request body is not valid HTTP/1.1 framing")
        response.force_close()
    except ChatdError as exc:
        response = error_response(exc.status, exc.code, exc.message, exc.headers)
    except BackendUnavailable as exc:
        logger.warning("request %s: backend unavailable: %s", request_id, exc)
        response = error_response(503, "unavailable", "a backend is unavailable; retry shortly", {"Retry-After": "1"})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kept = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        response = error_response(exc.status, _HTTP_CODES.get(exc.status, "http_error"), exc.reason, kept)
    except Exception:
        logger.exception("request %s: %s %s failed", request_id, request.method, _route(request))
        response = error_response(500, "internal_error", f"internal error (request id {request_id})")
    finally:
        if body_timer is not None:
            body_timer.cancel()
    headers.applied(response)  # a stream's went out with it; this sets them on every other answer
    verdict = policies.current.get()
    if verdict is not None and not response.prepared:
        # The policy this request counted against, on every answer after the check (a 404 too).
        response.headers["RateLimit-Policy"] = verdict.policy.header
        response.headers["RateLimit"] = verdict.field()
    response.headers["X-Request-Id"] = request_id
    route = _route(request)
    seconds = time.perf_counter() - started
    metrics.REQUEST_METRICS.observe(request.method, route, response.status, seconds)
    logs.ACCESS.write(request.method, route, response.status, seconds, request_id, logs.application_id.get())
    return response


def _route(request: web.Request) -> str:
    """The matched route's template (``/applications/{token}``): a path would log the token."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"
