"""/openapi.json: the API description, ``chatd/openapi.yaml``, served as JSON; /docs renders it."""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson
import yaml
from aiohttp import web
from swagger_ui_bundle import swagger_ui_path

from chatd.errors import NotFound
from chatd.handlers import headers

routes = web.RouteTableDef()


def load_spec() -> dict[str, Any]:
    """The OpenAPI document shipped with the package (``openapi.yaml``), parsed."""
    text = resources.files("chatd").joinpath("openapi.yaml").read_text(encoding="utf-8")
    spec: dict[str, Any] = yaml.safe_load(text)
    return spec


# Parsed and encoded once, at import: the document never changes while the process runs.
_SPEC_JSON = orjson.dumps(load_spec())


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=_SPEC_JSON, content_type="application/json")


# /docs: Swagger UI rendering /openapi.json. Its files come from the swagger-ui-bundle-v2
# package (Swagger UI 5, which reads OpenAPI 3.1) and are served by chatd itself: no CDN, so
# the page works offline and behind a firewall, and its version is pinned with chatd's.
_ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
_asset_cache: dict[str, bytes] = {}

# Swagger UI started by a file of chatd's rather than an inline script, so the page's policy
# allows scripts from this origin only. validatorUrl null: no badge fetched from swagger.io.
_INIT_JS = b"""window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  layout: "BaseLayout",
  validatorUrl: null,
});
"""
_OWN_ASSETS = {"chatd-init.js": (_INIT_JS, "text/javascript")}

_DOCS_PAGE = b"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>chatd API</title>
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script src="/docs/assets/swagger-ui-standalone-preset.js"></script>
  <script src="/docs/assets/chatd-init.js"></script>
</body>
</html>
"""

# Swagger UI's files from this origin; its style sheet draws icons from data: URLs; "Try it
# out" calls the API on this origin. React sets styles through the DOM (not blocked by CSP),
# so no 'unsafe-inline' is needed.
DOCS_POLICY = headers.policy(
    script_src="'self'", style_src="'self'", img_src="'self' data:", connect_src="'self'", form_action="'self'"
)


@routes.get("/docs")
async def swagger_ui(request: web.Request) -> web.Response:
    """The API description, rendered by Swagger UI."""
    response = web.Response(body=_DOCS_PAGE, content_type="text/html", charset="utf-8")
    response.headers[headers.CONTENT_SECURITY_POLICY] = DOCS_POLICY
    return response


@routes.get("/docs/assets/{name}")
async def swagger_ui_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    own = _OWN_ASSETS.get(name)
    if own is not None:
        return web.Response(body=own[0], content_type=own[1], headers={"Cache-Control": "no-cache"})
    content_type = _ASSETS.get(name)
    if content_type is None:
        raise NotFound(f"no file {name!r}", code="not_found")
    body = _asset_cache.get(name)
    if body is None:
        # Read on first use: the bundle is over a megabyte, and most processes never serve it.
        body = _asset_cache[name] = (swagger_ui_path / name).read_bytes()
    # The files change only with the package's version, which a restart brings.
    return web.Response(body=body, content_type=content_type, headers={"Cache-Control": "public, max-age=86400"})
