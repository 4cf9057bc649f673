"""The OpenAPI description (chatd/openapi.yaml): valid, complete, true to real answers, and fuzzed.

The fuzz test sends schemathesis' generated requests (valid and schema-violating, on generated
and on real path parameters; live streams included, ended after a short time) to the app on each
backend set, and checks that none gets a 5xx or a non-JSON error and that every answer matches
the description. It is deterministic, so it never flakes; set ``CHATD_FUZZ_SEED`` to another
number to explore other inputs.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import schemathesis
from aiohttp import ClientResponse
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import chatd
from chatd.app import create_app
from chatd.handlers.docs import load_spec
from tests.conftest import Api, embedded_settings

SPEC = load_spec()
SPEC_URI = "urn:chatd:openapi"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
SPEC_ROUTES = {
    (path, method.upper()) for path, item in SPEC["paths"].items() for method in item if method in HTTP_METHODS
}


def test_spec_is_valid() -> None:
    validate(SPEC)
    assert SPEC["info"]["version"] == chatd.__version__
    # What /openapi.json serves is the same document: no YAML-only values (dates, integer keys).
    assert orjson.loads(orjson.dumps(SPEC)) == SPEC


@pytest.mark.parametrize("role", ["api", "all", "worker"])
def test_every_route_is_described(role: str, tmp_path: Path) -> None:
    app = create_app(embedded_settings(tmp_path, role=role), run_workers=False)
    # aiohttp adds a HEAD route beside every GET; it answers like the GET, without a body.
    routes = {
        (route.resource.canonical, route.method)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    if role == "worker":
        assert routes == {("/healthz", "GET"), ("/readyz", "GET"), ("/metrics", "GET")}
    else:
        assert routes == SPEC_ROUTES


# Real answers conform ------------------------------------------------------------------------

_REGISTRY: Registry[Any] = Registry().with_resource(SPEC_URI, DRAFT202012.create_resource(SPEC))
# Concrete paths before templated ones, as OpenAPI matches them (".../messages/search").
_TEMPLATES: list[str] = sorted(SPEC["paths"], key=lambda path: (path.count("{"), path))


def _lookup(pointer: str) -> Any:
    node: Any = SPEC
    for part in pointer.lstrip("/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def _follow(pointer: str) -> tuple[str, Any]:
    """The node at ``pointer`` after following its ``$ref``s, and where it really is."""
    node = _lookup(pointer)
    while "$ref" in node:
        pointer = node["$ref"].removeprefix("#")
        node = _lookup(pointer)
    return pointer, node


def _template(path: str) -> str:
    for template in _TEMPLATES:
        if re.fullmatch(re.sub(r"\{[^}/]+\}", "[^/]+", template), path):
            return template
    raise AssertionError(f"{path} matches no path of the description")


async def conforming(response: ClientResponse) -> Any:
    """The response's body, once its status, headers, media type and body match the description."""
    template = _template(response.url.path)
    where = f"{response.method} {response.url.path_qs} -> {response.status}"
    operation = f"/paths/{_escape(template)}/{response.method.lower()}"
    assert str(response.status) in _lookup(operation)["responses"], f"{where}: undocumented status"
    pointer, described = _follow(f"{operation}/responses/{response.status}")
    for name in described.get("headers", {}):
        if _follow(f"{pointer}/headers/{_escape(name)}")[1].get("required"):
            assert name in response.headers, f"{where}: no {name} header"
    assert response.content_type in described["content"], f"{where}: undocumented {response.content_type}"
    if response.content_type != "application/json":
        return await response.text()
    body = await response.json()
    schema = {"$ref": f"{SPEC_URI}#{pointer}/content/{_escape(response.content_type)}/schema"}
    validator = Draft202012Validator(schema, registry=_REGISTRY, format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(body)]
    assert not errors, f"{where}: {body!r} does not match the description: {errors}"
    return body


async def expect(api: Api, method: str, path: str, status: int, code: str | None = None, **kwargs: Any) -> Any:
    response = await api.client.request(method, path, **kwargs)
    assert response.status == status, await response.text()
    body = await conforming(response)
    if code is not None:
        assert body["error"]["code"] == code
    return body


async def test_real_answers_match_the_description(api: Api) -> None:
    app = {"application": {"name": "Described"}}
    created = await expect(api, "POST", "/applications", 201, json=app)
    token = created["token"]
    base = f"/applications/{token}"
    for body, status, code in (
        (b"{nope", 400, "malformed_json"),
        (b"", 400, "missing_body"),
        (b"[]", 400, "malformed_json"),
        (b'{"application": 1}', 422, "missing_field"),
        (b'{"application": {"name": " "}}', 422, "invalid_field"),
        (b'{"application": {"name": 7}}', 422, "invalid_field"),
        (b'{"content": "' + b"x" * 70_000 + b'"}', 413, "body_too_large"),
    ):
        await expect(api, "POST", "/applications", status, code, data=body)
    await expect(api, "GET", "/applications?per_page=100", 401, "unauthorized")  # no admin token: closed
    await expect(api, "GET", base, 200)
    await expect(api, "GET", "/applications/nope", 404, "application_not_found")
    for method in ("PUT", "PATCH"):
        assert (await expect(api, method, base, 200, json={"application": {"name": method}}))["name"] == method
        await expect(api, method, "/applications/nope", 404, "application_not_found", json=app)
        await expect(api, method, base, 400, "missing_body")

    await expect(api, "POST", f"{base}/chats", 201, headers={"Idempotency-Key": "chat-1"})
    await expect(api, "POST", f"{base}/chats", 400, "invalid_header", headers={"Idempotency-Key": "x" * 256})
    await expect(api, "POST", "/applications/nope/chats", 404, "application_not_found")
    pending = await api.client.get(f"{base}/chats/1")
    assert (await conforming(pending))["error"]["code"] == "pending" and pending.headers["Retry-After"] == "1"
    await expect(api, "GET", f"{base}/chats/2", 404, "chat_not_found")
    await expect(api, "GET", f"{base}/chats/0", 400, "invalid_parameter")
    messages = f"{base}/chats/1/messages"
    await expect(api, "POST", messages, 201, json={"content": "hello described world"})
    await expect(api, "POST", messages, 422, "missing_field", json={"text": "hi"})
    await expect(api, "POST", messages, 422, "invalid_field", json={"content": "x" * 10_001})
    await expect(api, "POST", f"{base}/chats/9/messages", 404, "chat_not_found", json={"content": "hi"})
    await expect(api, "POST", f"{base}/chats/x/messages", 400, "invalid_parameter", json={"content": "hi"})
    await expect(api, "GET", f"{messages}/1", 404, "pending")
    await expect(api, "PUT", f"{messages}/1", 404, "pending", json={"content": "edited"})

    await api.settle()
    await expect(api, "GET", f"{base}/chats", 200)
    await expect(api, "GET", f"{base}/chats/1", 200)
    await expect(api, "GET", f"{base}/chats?per_page=0", 400, "invalid_parameter")
    await expect(api, "GET", messages, 200)
    await expect(api, "GET", f"{messages}/1", 200)
    await expect(api, "GET", f"{messages}/2", 404, "message_not_found")
    await expect(api, "GET", f"{messages}/search", 400, "missing_parameter")
    await expect(api, "GET", f"{messages}/search?query=" + "a" * 201, 400, "invalid_parameter")
    await expect(api, "GET", f"{base}/chats/9/messages/search?query=hello", 404, "chat_not_found")
    for method in ("PUT", "PATCH"):
        await expect(api, method, f"{messages}/1", 200, json={"content": f"{method} described world"})
        await expect(api, method, f"{messages}/1", 400, "malformed_json", data=b"{")
        await expect(api, method, f"{messages}/2", 404, "message_not_found", json={"content": "x"})
    await api.settle()
    found = await expect(api, "GET", f"{messages}/search?query=DESCRIBD&per_page=5", 200)
    assert [hit["message_number"] for hit in found["messages"]] == [1]

    await expect(api, "GET", "/healthz", 200)
    await expect(api, "GET", "/readyz", 200)
    assert "chatd_http_requests_total" in await expect(api, "GET", "/metrics", 200)
    assert await expect(api, "GET", "/openapi.json", 200) == SPEC


async def test_admin_token_answers_match_the_description(make_api) -> None:  # type: ignore[no-untyped-def]
    api = await make_api(admin_token="s3cret", admin_creates_applications=True)
    admin = {"Authorization": "Bearer s3cret"}
    refused = await api.client.get("/applications")
    assert (await conforming(refused))["error"]["code"] == "unauthorized"
    await expect(api, "GET", "/applications", 200, headers=admin)
    await expect(api, "GET", "/applications?per_page=100", 200, headers=admin)
    await expect(api, "GET", "/applications?per_page=101", 400, "invalid_parameter", headers=admin)
    await expect(api, "GET", "/applications?page=x", 400, "invalid_parameter", headers=admin)
    app = {"application": {"name": "Vetted"}}
    await expect(api, "POST", "/applications", 401, "unauthorized", json=app)
    await expect(api, "POST", "/applications", 201, json=app, headers=admin)


async def test_chat_limit_answers_match_the_description(make_api) -> None:  # type: ignore[no-untyped-def]
    api = await make_api(max_chats_per_application=1)
    token = await api.create_application()
    await expect(api, "POST", f"/applications/{token}/chats", 201)
    await expect(api, "POST", f"/applications/{token}/chats", 403, "chat_limit_reached")


# Fuzzing -------------------------------------------------------------------------------------

Operation = schemathesis.APIOperation[Any, Any, Any, Any]
FUZZ_EXAMPLES = 30  # per operation, over its variants
FUZZ_SEED = int(os.environ.get("CHATD_FUZZ_SEED", "0"))
# Not negative_data_rejection: chatd is lenient where that is harmless (an empty `page=` means the
# default, a repeated query parameter counts once), and leniency is no server error.
CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _negatable(operation: Operation, fixed: dict[str, Any]) -> bool:
    """Whether a schema-violating request exists when the ``fixed`` path parameters are given.

    Any non-empty string is a valid token, so a token alone cannot be made invalid.
    """
    if list(operation.query) or list(operation.headers) or list(operation.body):
        return True
    return any(
        parameter.name not in fixed and parameter.definition["schema"].get("type") != "string"
        for parameter in operation.path_parameters
    )


def _variants(operation: Operation, real: dict[str, Any]) -> list[st.SearchStrategy[Any]]:
    """Positive and negative requests on generated path parameters, on real ones, and on a real token.

    Generated tokens mostly meet a 404; real ones take numbers, bodies and queries past it.
    """
    names = [parameter.name for parameter in operation.path_parameters]
    fixings: list[dict[str, Any]] = [{}]
    if names:
        fixings.append({name: real[name] for name in names})
    if len(names) > 1:
        fixings.append({"token": real["token"]})
    strategies = []
    for fixed in fixings:
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed or None))
        if _negatable(operation, fixed):
            strategies.append(operation.as_strategy(GenerationMode.NEGATIVE, path_parameters=fixed or None))
    return strategies


def _check(case: schemathesis.Case[Operation], response: schemathesis.Response) -> None:
    assert response.status_code < 500, "server error"
    headers = {name.lower(): values for name, values in response.headers.items()}
    media_type = headers.get("content-type", [""])[0].split(";")[0]
    if case.operation.path == "/metrics" and response.status_code == 200:
        assert media_type == "text/plain"
        return
    if case.operation.path in EVENT_STREAMS and response.status_code == 200:
        # A stream (ended by CHATD_LIVE_STREAM_SECONDS): events, then the close event.
        assert media_type == "text/event-stream" and "event: close" in response.text, response.text[-300:]
        case.validate_response(response, checks=CONFORMANCE)
        return
    assert media_type == "application/json", f"not JSON: {media_type}"
    body = response.json()
    if response.status_code >= 400 and case.operation.path != "/readyz":
        assert isinstance(body, dict) and set(body) == {"error"}, "no error envelope"
        assert isinstance(body["error"].get("code"), str) and isinstance(body["error"].get("message"), str)
    case.validate_response(response, checks=CONFORMANCE)


def _fuzz_operation(operation: Operation, base_url: str, real: dict[str, Any], session: requests.Session) -> str | None:
    last_failure: list[str] = []

    @seed(FUZZ_SEED)
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        print_blob=False,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    @given(case=st.one_of(_variants(operation, real)))
    def run(case: schemathesis.Case[Operation]) -> None:
        response = case.call(base_url=base_url, session=session, timeout=10)
        try:
            _check(case, response)
        except Exception as exc:  # an assertion or schemathesis' failure group: say which request
            mode = case.meta.generation.mode.value if case.meta else "?"
            last_failure[:] = [
                f"{operation.label} ({mode}): {type(exc).__name__}: {exc}\n"
                f"  request: {case.as_curl_command(base_url=base_url)}\n"
                f"  response: {response.status_code} {response.text[:500]}"
            ]
            raise

    try:
        run()
    except (Exception, BaseExceptionGroup) as exc:  # schemathesis reports failures as a group
        return last_failure[0] if last_failure else f"{operation.label}: {type(exc).__name__}: {exc}"
    return None


# Live event streams are fuzzed with a stream time limit (FUZZ_STREAM_SECONDS), so a valid request
# ends; the page is HTML: tests/live checks its answers against the description instead.
EVENT_STREAMS = {"/applications/{token}/chats/{chat}/events", "/applications/{token}/events"}
FUZZ_STREAM_SECONDS = 0.2
NOT_FUZZED = {"/", "/static/{name}"}
# /docs and its files are HTML, CSS and JavaScript too: tests/operating/test_docs.py checks them.
NOT_FUZZED |= {"/docs", "/docs/assets/{name}"}


def _fuzz(base_url: str, real: dict[str, Any]) -> list[str]:
    schema = schemathesis.openapi.from_dict(SPEC)
    failures = []
    with requests.Session() as session:
        for path, method in sorted(SPEC_ROUTES):
            if path in NOT_FUZZED:
                continue
            failure = _fuzz_operation(schema[path][method], base_url, real, session)
            if failure:
                failures.append(failure)
    return failures


async def test_bad_input_never_gets_a_server_error(make_api) -> None:  # type: ignore[no-untyped-def]
    # The development switch lets the listing's paging be fuzzed past its 401.
    api = await make_api(open_listing=True, live_stream_seconds=FUZZ_STREAM_SECONDS)
    token = await api.create_application()
    chat = await api.create_chat(token)
    for content in ("hello fuzz", "another message", "third one"):
        await api.create_message(token, chat, content)
    await api.settle()
    # requests is synchronous: it runs in a thread while this loop serves the app.
    failures = await asyncio.to_thread(
        _fuzz, str(api.client.make_url("")).rstrip("/"), {"token": token, "chat": chat, "message": 1}
    )
    assert not failures, "\n\n".join(failures)
