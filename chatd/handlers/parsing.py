"""Reading requests: JSON bodies, path numbers and paging, each failing with a clear 4xx."""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson
from aiohttp import web

from chatd.errors import BadRequest, Unprocessable

MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 20
MAX_NAME_CHARS = 255


async def json_object(request: web.Request) -> dict[str, Any]:
    body = await request.read()  # raises 413 past the configured size
    if not body.strip():
        raise BadRequest("the request needs a JSON body", code="missing_body")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", code="malformed_json") from exc
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object", code="malformed_json")
    return data


def text_field(data: dict[str, Any], name: str, max_chars: int, where: str = "") -> str:
    label = f"{where}.{name}" if where else name
    if name not in data:
        raise Unprocessable(f"'{label}' is required", code="missing_field")
    value = data[name]
    if not isinstance(value, str):
        raise Unprocessable(f"'{label}' must be a string", code="invalid_field")
    if not value.strip():
        raise Unprocessable(f"'{label}' must not be empty", code="invalid_field")
    if len(value) > max_chars:
        raise Unprocessable(f"'{label}' must be at most {max_chars} characters", code="invalid_field")
    return value


async def application_name(request: web.Request) -> str:
    data = await json_object(request)
    inner = data.get("application")
    if not isinstance(inner, dict):
        raise Unprocessable('the body must look like {"application": {"name": ...}}', code="missing_field")
    return text_field(inner, "name", MAX_NAME_CHARS, "application")


async def grace_seconds(request: web.Request, default: int, maximum: int) -> int:
    """A rotation's ``{"grace_seconds": N}``: 0 to ``maximum``; no body (or no field): ``default``."""
    if not (await request.read()).strip():
        return min(default, maximum)
    data = await json_object(request)
    value = data.get("grace_seconds", min(default, maximum))
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise Unprocessable(
            f"'grace_seconds' must be a whole number of seconds from 0 (revoke the old token now) to {maximum}",
            code="invalid_field",
        )
    return value


def path_number(request: web.Request, name: str) -> int:
    raw = request.match_info[name]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18 or int(raw) < 1:
        raise BadRequest(f"'{name}' in the path must be a positive integer, not {raw!r}", code="invalid_parameter")
    return int(raw)


def _query_int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        raise BadRequest(f"'{name}' must be a positive integer, not {raw!r}", code="invalid_parameter")
    return int(raw)


def paging(request: web.Request) -> tuple[int, int]:
    page = _query_int(request, "page", 1)
    per_page = _query_int(request, "per_page", DEFAULT_PER_PAGE)
    if page < 1:
        raise BadRequest("'page' must be at least 1", code="invalid_parameter")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise BadRequest(f"'per_page' must be between 1 and {MAX_PER_PAGE}", code="invalid_parameter")
    return page, per_page


class Cursor(NamedTuple):
    """Keyset paging: the items numbered above ``after`` (0 to start), ``limit`` of them."""

    after: int
    limit: int


# Numbers in paths go up to 18 digits (every one fits the store's signed 64-bit columns), so a
# cursor (the last number of a page) or a resume point (the last event id) may too.
_MAX_NUMBER_DIGITS = 18


def number_from(raw: str, name: str) -> int:
    """``raw`` as a number of at least 0 that the store can hold, else 400 ``invalid_parameter``.

    ASCII digits only: ``str.isdigit`` alone also accepts other scripts' digits (``١٢``, which
    ``int`` reads as 12) and superscripts (``²``, which ``int`` refuses).
    """
    if not raw.isascii() or not raw.isdigit() or len(raw) > _MAX_NUMBER_DIGITS:
        raise BadRequest(
            f"'{name}' must be a number of at least 0 (ASCII digits, at most {_MAX_NUMBER_DIGITS}), not {raw!r}",
            code="invalid_parameter",
        )
    return int(raw)


def _given(request: web.Request, names: tuple[str, ...]) -> bool:
    return any(request.query.get(name) for name in names)


def cursor(request: web.Request) -> Cursor | None:
    """The cursor asked for with ``after``/``limit``, or None for ``page``/``per_page`` paging.

    The two styles answer different questions (a position vs. a page number), so a request
    naming both is refused rather than silently preferring one.
    """
    if not _given(request, ("after", "limit")):
        return None
    if _given(request, ("page", "per_page")):
        raise BadRequest("use either 'after'/'limit' or 'page'/'per_page', not both", code="invalid_parameter")
    after = number_from(request.query.get("after") or "0", "after")
    limit = _query_int(request, "limit", DEFAULT_PER_PAGE)
    if not 1 <= limit <= MAX_PER_PAGE:
        raise BadRequest(f"'limit' must be between 1 and {MAX_PER_PAGE}", code="invalid_parameter")
    return Cursor(after, limit)


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise BadRequest("'Idempotency-Key' must be 1 to 255 printable characters", code="invalid_header")
    return key
