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


class Unavailable(ChatdError):
    """A backend the request needs is down; the client should retry later."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class BackendUnavailable(Exception):
    """Raised by adapters when their server cannot be reached; becomes a 503."""
