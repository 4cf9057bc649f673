"""/openapi.json: the API description, ``chatd/openapi.yaml``, served as JSON."""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson
import yaml
from aiohttp import web

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
