"""Logging configured once: one JSON object per line on stderr.

Two paths. Everything goes through the ``logging`` module and python-json-logger, except the
access log: a line per HTTP request through ``logging`` (a LogRecord, the formatter, a write
and a flush) costs about 20 µs, a fifth of chatd's whole request at 8,800 requests/s, so
``AccessLog`` encodes the line with orjson (about 2.5 µs) and writes the lines of one
event-loop iteration together, one system call for many requests under load.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import os
import sys
import time
from typing import Any, BinaryIO

import orjson
from pythonjsonlogger.json import JsonFormatter
from yarl import URL

from chatd.settings import Settings, server_urls

logger = logging.getLogger(__name__)

# The application a request acted on, set by the service once it resolved the token, so that
# the access log can name the application by id (a token is a secret, never logged).
application_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("application_id", default=None)

ACCESS_LOGGER = "chatd.access"
# Settings whose values are secrets, and settings that are URLs which may hold a password.
_SECRETS = {"admin_token"}
_MASK = "***"


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s", rename_fields={"asctime": "time", "levelname": "level"}
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    ACCESS.enabled = logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO)


def masked_settings(settings: Settings) -> dict[str, Any]:
    """Every setting, with secrets masked: the admin token, and passwords inside URLs."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if field.name in _SECRETS and value:
            value = _MASK
        elif isinstance(value, str) and field.name.endswith("_url"):
            value = _mask_url(value)
        values[field.name] = value
    return values


def _mask_url(text: str) -> str:
    """A URL, or a comma-separated list of them (one per server of a cluster), passwords masked."""
    if "," in text and "+sentinel://" not in text:
        return ",".join(_mask_url(part) for part in server_urls(text))
    try:
        url = URL(text)
    except ValueError:
        return _MASK
    return str(url.with_password(_MASK)) if url.password else text


def log_settings(settings: Settings, command: str) -> None:
    """One INFO line at start: what this process runs with (secrets masked)."""
    logger.info("chatd %s starting", command, extra={"settings": masked_settings(settings), "pid": os.getpid()})


class AccessLog:
    """One JSON line per HTTP request: method, route, status, duration, request id, application id.

    The route is the route's template (``/applications/{token}/chats``), never the path, which
    holds the token. Lines wait in memory until the event loop comes round (``call_soon``), then
    go out in one write: under load a write carries many lines, and a quiet server still writes
    each line at once.
    """

    def __init__(self, stream: BinaryIO | None = None):
        self.enabled = False
        self.stream = stream
        self._lines: list[bytes] = []

    def write(self, method: str, route: str, status: int, seconds: float, request_id: str, app_id: int | None) -> None:
        if not self.enabled:
            return
        if not self._lines:
            asyncio.get_running_loop().call_soon(self.flush)
        self._lines.append(
            orjson.dumps(
                {
                    "time": _now(),
                    "level": "INFO",
                    "name": ACCESS_LOGGER,
                    "message": "request",
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 3),
                    "request_id": request_id,
                    "application_id": app_id,
                }
            )
        )

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if not lines:
            return
        data = b"\n".join(lines) + b"\n"
        try:
            if self.stream is not None:
                self.stream.write(data)
                self.stream.flush()
            else:
                sys.stderr.flush()  # what went through logging first stays first
                fd = sys.stderr.fileno()
                while data:
                    data = data[os.write(fd, data) :]
        except (OSError, ValueError):  # stderr closed: the lines have nowhere to go
            pass


_second: list[Any] = [-1, ""]  # the whole second last formatted, and its text


def _now() -> str:
    """UTC ISO 8601 with milliseconds; the date and time formatted once a second, not per line."""
    moment = time.time()
    whole = int(moment)
    if whole != _second[0]:
        _second[:] = [whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))]
    return f"{_second[1]}.{int((moment - whole) * 1000):03d}Z"


ACCESS = AccessLog()
