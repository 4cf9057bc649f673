"""The errors chatd reports to clients; ``handlers.middleware`` renders them as JSON."""

from __future__ import annotations


class ChatdError(Exception):
    """An error with an HTTP status and a stable, machine-readable code."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers or {}


class BadRequest(ChatdError):
    status = 400
    code = "bad_request"


class Unauthorized(ChatdError):
    status = 401
    code = "unauthorized"


class Forbidden(ChatdError):
    """Understood and refused, whoever asks: a limit of the deployment is reached."""

    status = 403
    code = "forbidden"


class NotFound(ChatdError):
    status = 404
    code = "not_found"


class Pending(ChatdError):
    """The number was handed out but no worker has stored the record yet."""

    status = 404
    code = "pending"

    def __init__(self, message: str):
        super().__init__(message, headers={"Retry-After": "1"})


class Conflict(ChatdError):
    status = 409
    code = "conflict"


class Unprocessable(ChatdError):
    status = 422
    code = "invalid_field"


class RateLimited(ChatdError):
    """The application is over one of its rate limits (``chatd.limits``); retry after ``Retry-After``."""

    status = 429
    code = "rate_limited"


class Unavailable(ChatdError):
    """A backend the request needs is down; the client should retry later."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, retry_after: int = 1, *, code: str | None = None):
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after)})


class BackendUnavailable(Exception):
    """A backend cannot do the work right now, though it may in a moment; nothing is wrong with the work.

    Raised by each adapter where its driver's error is known, typed with ``backend``, the
    engine ("sqlite", "mysql", "redis", "rabbitmq", "elasticsearch"), and ``cause``, one word
    out of a small set ("connection", "timeout", "locked", "deadlock", "disk_full", "io_error",
    "read_only", "loading", "oom", "too_many_connections", "overloaded", "blocked", ...), so that
    what handles it dispatches on the type, never on the text: the API answers 503 with
    Retry-After, consumers give their jobs back without spending an attempt and wait, loops
    wait and try again, and ``/metrics`` counts it by backend and cause.
    """

    def __init__(self, message: str, *, backend: str = "unknown", cause: str = "unknown"):
        super().__init__(message)
        self.backend = backend
        self.cause = cause
