"""The HTTP/1.1 layer under the application: what chatd answers before a route is reached.

aiohttp answers requests it cannot parse (an overlong line, a bad chunk size, a missing Host,
an unsupported Content-Encoding, ...) from ``RequestHandler.handle_error``, in text/plain that
echoes part of the request line, and logs each with a traceback at ERROR. A client's mistake
is not chatd's fault: here it gets the same JSON error shape as every other error, with a
fixed message (never the path, which holds the application token), logged at INFO.

The runner installs this protocol; ``Expect`` is handled per route (``expect_handler``). The
answers made here carry chatd's headers (``chatd.handlers.headers``: ``Server: chatd``, never
aiohttp's Python and aiohttp versions): a request the parser refused never reaches the
application, whose error middleware sets them on every other response.
"""

from __future__ import annotations

import logging

from aiohttp import hdrs, http_exceptions, web
from aiohttp.http import HttpVersion11
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from chatd import keys
from chatd.handlers import headers
from chatd.handlers.render import error_response

logger = logging.getLogger(__name__)

# (status, code, message) by the parser's exception, most specific first. The messages are
# fixed: the parser's own ones quote the offending bytes, which may include a token.
_PARSE_ERRORS: tuple[tuple[type[Exception], int, str, str], ...] = (
    (
        http_exceptions.LineTooLong,
        431,
        "headers_too_large",
        "the request line or a header is too long (at most 8,190 bytes) or there are too many headers",
    ),
    (
        http_exceptions.ContentEncodingError,
        415,
        "unsupported_content_encoding",
        "the Content-Encoding is not supported; send the body uncompressed, or gzip or deflate",
    ),
    (http_exceptions.BadHttpMethod, 400, "bad_method", "the request method is not a valid HTTP method"),
    (http_exceptions.InvalidURLError, 400, "bad_target", "the request target is not a valid URL"),
)
_MALFORMED = (400, "malformed_request", "the request is not valid HTTP/1.1")


def classify(exc: BaseException | None, status: int) -> tuple[int, str, str]:
    """The JSON error for a request the HTTP parser refused."""
    if isinstance(exc, http_exceptions.BadHttpMessage) and "Too many headers" in str(exc.message):
        return 431, "headers_too_large", "too many headers"
    for kind, code_status, code, message in _PARSE_ERRORS:
        if isinstance(exc, kind):
            return code_status, code, message
    if 400 < status < 500:
        return status, "bad_request", "the request was refused"
    return _MALFORMED


class ChatdRequestHandler(RequestHandler):
    """aiohttp's protocol with chatd's errors: JSON, no echo, client mistakes at INFO."""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # part of a response went out: the connection is broken
            raise ConnectionError("response already started, cannot send the error")
        if status >= 500:
            # Only reached when an exception escaped error_middleware (or a handler timed out).
            logger.error("request failed past the error middleware", exc_info=exc)
            response = error_response(500 if status != 504 else 504, "internal_error", "internal error")
        else:
            status, code, text = classify(exc, status)
            # INFO, no traceback: a careless or hostile client, not a fault of this process.
            logger.info("refused a malformed request from %s: %s (%s)", request.remote, code, type(exc).__name__)
            response = error_response(status, code, text)
        response.force_close()
        headers.apply(response.headers)  # these never reach the application's middleware
        return response

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        # JSON for an HTTPException raised before the middleware (Expect stage), and chatd's
        # headers on any such exception: the middleware, which sets them on every other
        # response, did not see it.
        if isinstance(resp, web.HTTPException):
            if resp.status >= 400:
                code = "expectation_failed" if resp.status == 417 else "bad_request"
                resp = error_response(resp.status, code, resp.reason)
                resp.force_close()
            headers.applied(resp)
        return await super().finish_response(request, resp, start_time)


class ChatdServer(web.Server):
    """aiohttp's low-level server, making a ``ChatdRequestHandler`` per connection."""

    def __call__(self) -> RequestHandler:
        return ChatdRequestHandler(self, loop=self._loop, **self._kwargs)


class ChatdRunner(web.AppRunner):
    """``AppRunner`` whose connections speak through ``ChatdRequestHandler``."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # AppRunner builds a plain Server from the application; ChatdServer only changes which
        # protocol class it makes (no state of its own), so the built server is adopted as is.
        server.__class__ = ChatdServer
        return server


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue``: refuse at once a body over the limit instead of inviting it."""
    if request.version != HttpVersion11:
        return None
    if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
        response = error_response(417, "expectation_failed", "only 'Expect: 100-continue' is supported")
        response.force_close()
        return headers.applied(response)  # answered before the middleware
    length = request.content_length
    if length is not None and length > request.app[keys.SETTINGS].max_body_bytes:
        response = error_response(
            413, "body_too_large", f"the body is over {request.app[keys.SETTINGS].max_body_bytes} bytes"
        )
        response.force_close()  # the body was not invited, so the connection cannot be reused
        return headers.applied(response)  # answered before the middleware
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the 100 is not the response: an error may still follow
    return None


def add_routes(app: web.Application, routes: web.RouteTableDef) -> None:
    """Add a module's routes with chatd's ``Expect`` handler."""
    for route in routes:
        assert isinstance(route, web.RouteDef), route
        app.router.add_route(route.method, route.path, route.handler, expect_handler=expect_continue, **route.kwargs)
