"""``/``: a small chat client (plain HTML, CSS and JavaScript shipped in ``chatd/static``)."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from chatd.errors import NotFound
from chatd.handlers import headers

routes = web.RouteTableDef()

_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}


def _load() -> dict[str, tuple[bytes, str]]:
    files: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files("chatd").joinpath("static").iterdir():
        suffix = entry.name[entry.name.rfind(".") :]
        if suffix in _TYPES:
            files[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    return files


# A handful of small files, read once: the page never changes while the process runs.
_FILES = _load()

# What the page loads: its own script and style sheet (no inline code), the API and its event
# streams on the same origin; images only for the browser's favicon request.
PAGE_POLICY = headers.policy(
    script_src="'self'", style_src="'self'", connect_src="'self'", img_src="'self'", form_action="'self'"
)


def _file(name: str) -> web.Response:
    found = _FILES.get(name)
    if found is None:
        raise NotFound(f"no file {name!r}", code="not_found")
    body, content_type = found
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers={"Cache-Control": "no-cache"})


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    response = _file("index.html")
    response.headers[headers.CONTENT_SECURITY_POLICY] = PAGE_POLICY
    return response


@routes.get("/static/{name}")
async def static(request: web.Request) -> web.Response:
    return _file(request.match_info["name"])
