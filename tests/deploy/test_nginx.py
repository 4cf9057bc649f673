"""deploy/nginx.conf: parsed and compared with chatd and the compose file, then run for real.

The configuration is also run by the real nginx binary (apt package ``nginx``), which must be
installed: a gateway test skipped in CI would be a gateway never tested.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from chatd.handlers.middleware import _HTTP_CODES
from tests.deploy.helpers import (
    HSTS,
    TLS_DIR,
    Directive,
    Gateway,
    depends_on,
    gateway,
    gateway_listens,
    http_block,
    local_nginx_conf,
    local_ports,
    nginx_command,
    plain_server_block,
    published_ports,
    serve_settings,
    server_block,
)
from tests.servers import free_port


def select_location(server: Directive, path: str) -> Directive:
    """The location nginx picks: exact, then longest prefix (^~ stops), then first regex, else prefix."""
    locations = server.find("location")
    for location in locations:
        if location.args[0] == "=" and location.args[1] == path:
            return location
    prefixes = [loc for loc in locations if len(loc.args) == 1 or loc.args[0] == "^~"]
    matching = sorted((loc for loc in prefixes if path.startswith(loc.args[-1])), key=lambda loc: -len(loc.args[-1]))
    if matching and matching[0].args[0] == "^~":
        return matching[0]
    for location in locations:
        if location.args[0] in ("~", "~*") and re.search(
            location.args[1], path, re.I if location.args[0] == "~*" else 0
        ):
            return location
    assert matching, f"no location for {path}"
    return matching[0]


def zones(nginx: Directive) -> dict[str, str]:
    defined = {}
    for zone in http_block(nginx).find("limit_req_zone"):
        options = dict(arg.split("=", 1) for arg in zone.args if "=" in arg)
        defined[options["zone"].split(":")[0]] = options["rate"]
    return defined


def zone_of(limit_req: Directive) -> str:
    (zone,) = [arg.split("=", 1)[1] for arg in limit_req.args if arg.startswith("zone=")]
    return zone


def limits(location: Directive) -> set[str]:
    return {zone_of(d) for d in location.find("limit_req")}


def test_nginx_rate_limits_as_the_reference(nginx: Directive) -> None:
    defined = zones(nginx)
    used = {zone_of(d) for d in nginx.walk() if d.name == "limit_req"}
    assert used == set(defined), f"zones defined {set(defined)}, used {used}"
    assert sorted(defined.values()) == ["100r/s", "50r/s", "5r/m"]
    server = server_block(nginx)
    by_rate = {rate: name for name, rate in defined.items()}
    for path in [
        "/applications/tok/chats",
        "/applications/tok/chats/",
        "/applications/tok/chats/7",
        "/applications/tok/chats/7/messages",
        "/applications/tok/chats/7/messages/search",
    ]:
        assert by_rate["50r/s"] in limits(select_location(server, path)), f"{path} is not held to 50 r/s"
    for path in ["/applications/tok", "/applications/tok/chatsx", "/healthz"]:
        location = select_location(server, path)
        assert limits(location) == {by_rate["100r/s"]}, f"{path}: {limits(location)}"
    # Creating an application: a few a minute per address, on top of the general limit; the
    # zone's key is the address for POST only (an empty key is not counted), so listing is not.
    assert limits(select_location(server, "/applications")) == {by_rate["100r/s"], by_rate["5r/m"]}
    (creations,) = [
        z for z in http_block(nginx).find("limit_req_zone") if f"zone={by_rate['5r/m']}:" in " ".join(z.args)
    ]
    (key_map,) = [m for m in http_block(nginx).find("map") if m.args[1] == creations.args[0]]
    assert key_map.args[0] == "$request_method"
    assert {d.name: d.args[0] for d in key_map.block or []} == {"POST": "$binary_remote_addr", "default": ""}
    assert http_block(nginx).find("limit_req_status")[0].args == ["429"]


def test_nginx_balances_least_connections_over_the_api(nginx: Directive, compose: dict[str, Any]) -> None:
    upstreams = {u.args[0]: u for u in http_block(nginx).find("upstream")}
    assert len(upstreams) == 1
    ((name, upstream),) = upstreams.items()
    assert upstream.find("least_conn")
    servers = serve_settings(compose)
    for server in upstream.find("server"):
        host, _, port = server.args[0].rpartition(":")
        assert host in servers and servers[host].role in ("api", "all"), f"upstream {host} is no api service"
        assert int(port) == servers[host].port, f"upstream port {port}, api listens on {servers[host].port}"
    proxied = [d for d in nginx.walk() if d.name == "proxy_pass"]
    assert proxied and all(d.args == [f"http://{name}"] for d in proxied)


def test_nginx_retries_only_idempotent_requests(nginx: Directive) -> None:
    directives = [d for d in nginx.walk() if d.name == "proxy_next_upstream"]
    assert directives
    for directive in directives:
        assert {"error", "timeout"} <= set(directive.args)
        assert "non_idempotent" not in directive.args, "a POST must never reach two replicas"


def test_nginx_body_limit_matches_chatd(nginx: Directive, compose: dict[str, Any]) -> None:
    (size,) = [d.args[0] for d in nginx.walk() if d.name == "client_max_body_size"]
    number, unit = re.fullmatch(r"(\d+)([kKmM]?)", size).groups()  # type: ignore[union-attr]
    limit = int(number) * {"": 1, "k": 1024, "m": 1024 * 1024}[unit.lower()]
    for name, settings in serve_settings(compose).items():
        if settings.role in ("api", "all"):
            assert limit == settings.max_body_bytes, f"nginx takes {limit} bytes, {name} {settings.max_body_bytes}"


def test_nginx_errors_are_chatd_shaped_json(nginx: Directive) -> None:
    server = server_block(nginx)
    assert http_block(nginx).find("default_type")[0].args == ["application/json"]
    pages = {code: d.args[-1] for d in server.find("error_page") for code in d.args[:-1] if code.isdigit()}
    expected = {"413": _HTTP_CODES[413], "429": "rate_limited", "502": None, "503": None, "504": None}
    named = {loc.args[0]: loc for loc in server.find("location")}
    for code, error_code in expected.items():
        assert code in pages, f"nginx answers {code} with its HTML page"
        (returned,) = named[pages[code]].find("return")
        assert returned.args[0] == code
        body = json.loads(returned.args[1])
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
        assert error_code is None or body["error"]["code"] == error_code
        headers = {d.args[0] for d in named[pages[code]].find("add_header")}
        assert "X-Request-Id" in headers


def test_nginx_passes_the_request_id(nginx: Directive) -> None:
    server = server_block(nginx)
    headers = {d.args[0].lower(): d.args[1] for d in server.find("proxy_set_header")}
    variable = headers.get("x-request-id", "")
    (mapping,) = [m for m in http_block(nginx).find("map") if m.args[1] == variable]
    assert mapping.args[0] == "$http_x_request_id"
    entries = {d.name: d.args[0] for d in mapping.block or []}
    assert entries == {"default": "$http_x_request_id", "": "$request_id"}
    for location in server.find("location"):
        # One proxy_set_header in a location drops every inherited one.
        assert not location.find("proxy_set_header"), f"location {location.args} drops the X-Request-Id"


def read_only_mounts(service: dict[str, Any]) -> dict[str, str]:
    """``{target: source}`` of the service's read-only mounts, short or long syntax."""
    found = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("read_only"):
                found[str(volume["target"])] = str(volume["source"])
        elif str(volume).count(":") == 2 and str(volume).endswith(":ro"):
            source, target, _ = str(volume).split(":")
            found[target] = source
    return found


def test_nginx_is_wired_into_compose(nginx: Directive, compose: dict[str, Any]) -> None:
    _, service = gateway(compose)
    mounts = read_only_mounts(service)
    assert mounts.get("/etc/nginx/nginx.conf") == "./deploy/nginx.conf"
    # The certificate directory comes from the deployment, read-only, where the file reads it.
    assert TLS_DIR in mounts, f"nothing mounted on {TLS_DIR}"
    files = [d.args[0] for d in server_block(nginx).walk() if d.name in ("ssl_certificate", "ssl_certificate_key")]
    assert len(files) == 2 and all(Path(f).parent == Path(TLS_DIR) for f in files), files
    # Both ports are published: HTTPS, and the plain one that redirects to it.
    listens = gateway_listens(nginx)
    assert {target for _, _, target in published_ports(service)} == set(listens)
    # The healthcheck asks the plain server, which answers the health check itself.
    probe = " ".join(service["healthcheck"]["test"])
    (url,) = re.findall(r"https?://\S+", probe)
    assert url == f"http://127.0.0.1:{listen_port_of(plain_server_block(nginx))}/gateway/healthz", url
    assert depends_on(service) and all(
        serve_settings(compose)[name].role in ("api", "all") for name in depends_on(service)
    )


def listen_port_of(server: Directive) -> int:
    (listen,) = server.find("listen")
    return int(listen.args[0].rsplit(":", 1)[-1])


# --- nginx itself: syntax and behaviour --------------------------------------------------------


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    conf = local_nginx_conf(tmp_path, local_ports(), free_port())
    result = subprocess.run([*nginx_command(conf), "-t"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


@dataclass
class EchoUpstream:
    """A stand-in api replica: answers every request with the headers it received."""

    seen: list[dict[str, str]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    stopped: threading.Event = field(default_factory=threading.Event)

    def start(self) -> int:
        seen, stopped = self.seen, self.stopped

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes

            def answer(self) -> None:
                if stopped.is_set():  # a connection nginx keeps alive: hang up, as a dead replica
                    self.close_connection = True
                    return
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                seen.append({k.lower(): v for k, v in self.headers.items()})
                body = json.dumps({"headers": seen[-1]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.stopped.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def gateway_and_upstream(tmp_path: Path) -> Iterator[tuple[Gateway, EchoUpstream]]:
    upstream = EchoUpstream()
    try:
        with Gateway(tmp_path, upstream.start()) as gateway:
            yield gateway, upstream
    finally:
        upstream.stop()


def https_connection(gateway: Gateway) -> http.client.HTTPSConnection:
    """HTTPS to the gateway, its certificate verified."""
    return http.client.HTTPSConnection("127.0.0.1", gateway.port, timeout=10, context=gateway.ssl)


def request(
    gateway: Gateway,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    connection: http.client.HTTPConnection | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = connection or https_connection(gateway)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        if connection is None:
            conn.close()


def test_gateway_behaviour(gateway_and_upstream: tuple[Gateway, EchoUpstream]) -> None:
    """Over HTTPS, certificate verified; every answer, proxied or nginx's own, carries HSTS."""
    gateway, upstream = gateway_and_upstream
    # The client's request id reaches the api; without one, nginx makes one up.
    status, headers, body = request(gateway, "GET", "/applications", headers={"X-Request-Id": "req-42"})
    assert status == 200 and json.loads(body)["headers"]["x-request-id"] == "req-42"
    assert json.loads(body)["headers"]["x-forwarded-proto"] == "https"
    assert headers["strict-transport-security"] == HSTS
    status, _, body = request(gateway, "GET", "/applications")
    assert status == 200 and re.fullmatch(r"[0-9a-f]{32}", json.loads(body)["headers"]["x-request-id"])
    # Bodies over chatd's limit stop at the gateway, in chatd's error shape.
    status, headers, body = request(
        gateway,
        "POST",
        "/applications",
        body=b"x" * (64 * 1024 + 1),
        headers={"Content-Type": "application/json", "X-Request-Id": "big"},
    )
    assert status == 413 and json.loads(body)["error"]["code"] == "body_too_large"
    assert headers["content-type"].startswith("application/json") and headers["x-request-id"] == "big"
    assert headers["strict-transport-security"] == HSTS
    status, headers, body = request(gateway, "GET", "/metrics")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    assert headers["strict-transport-security"] == HSTS
    # 150 requests fit the general limit (100 r/s, burst 200) however fast they come; 400 to the
    # chat endpoints run into their 50 r/s (burst 100) unless they took over 6 s.
    connection = https_connection(gateway)
    general = Counter(request(gateway, "GET", "/applications", connection=connection)[0] for _ in range(150))
    assert general == {200: 150}, general
    chats: Counter[int] = Counter()
    limited: tuple[dict[str, str], bytes] | None = None
    started = time.monotonic()
    for _ in range(400):
        status, headers, body = request(gateway, "GET", "/applications/tok/chats", connection=connection)
        chats[status] += 1
        limited = (headers, body) if status == 429 else limited
    elapsed = time.monotonic() - started
    connection.close()
    assert chats[429] > 0 and set(chats) <= {200, 429}, f"{chats} in {elapsed:.2f}s"
    assert limited is not None
    headers, body = limited
    assert json.loads(body)["error"]["code"] == "rate_limited"
    assert headers["content-type"].startswith("application/json") and headers["retry-after"] == "1"
    assert headers["strict-transport-security"] == HSTS
    # No replica answering is a JSON 502 too.
    upstream.stop()
    status, headers, body = request(gateway, "GET", "/applications", headers={"X-Request-Id": "down"})
    assert status == 502 and json.loads(body)["error"]["code"] == "bad_gateway"
    assert headers["x-request-id"] == "down" and headers["strict-transport-security"] == HSTS
