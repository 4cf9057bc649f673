"""deploy/nginx.conf serves HTTPS (issue 21): TLS 1.2 and 1.3 only with Mozilla's intermediate ciphers,
HTTP/2, HSTS; plain HTTP redirects to it, all but the gateway's own health check.

Run by the real nginx with a throwaway CA's certificate for 127.0.0.1 and localhost (``LocalTls``
in helpers.py, made per test in tmp_path). Every client verifies it against that CA: none turns
verification off, and one without the CA is shown to fail.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shlex
import socket
import ssl
import subprocess
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import embedded_settings
from tests.deploy.helpers import (
    COMPOSE,
    HSTS,
    Directive,
    Gateway,
    LocalTls,
    local_nginx_conf,
    local_ports,
    nginx_command,
    plain_server_block,
    server_block,
)
from tests.deploy.test_nginx import EchoUpstream
from tests.factories import eventually
from tests.live.helpers import SseStream, WsStream
from tests.processes import ChatdProcess, application_and_chat, created
from tests.servers import free_port

# Mozilla's intermediate profile for TLS 1.2: ECDHE key exchange, AEAD ciphers only.
INTERMEDIATE_TLS12 = {
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
}


# --- the configuration ---------------------------------------------------------------------------


def settings(block: Directive) -> dict[str, list[str]]:
    return {d.name: d.args for d in block.block or []}


def test_tls_is_mozilla_intermediate_with_http2(nginx: Directive) -> None:
    server = server_block(nginx)
    tls = settings(server)
    assert tls["ssl_protocols"] == ["TLSv1.2", "TLSv1.3"]
    assert set(tls["ssl_ciphers"][0].split(":")) == INTERMEDIATE_TLS12
    assert tls["ssl_prefer_server_ciphers"] == ["off"]
    assert tls["ssl_session_tickets"] == ["off"]
    assert tls["ssl_session_cache"][0].startswith("shared:")
    (listen,) = server.find("listen")
    assert {"ssl", "http2"} <= set(listen.args[1:])


def test_hsts_is_on_every_https_location_and_not_on_plain_http(nginx: Directive) -> None:
    server = server_block(nginx)
    hsts = ["Strict-Transport-Security", HSTS, "always"]
    assert hsts in [d.args for d in server.find("add_header")]
    # add_header in a location drops the server's: each location with its own repeats HSTS.
    for location in server.find("location"):
        own = [d.args for d in location.find("add_header")]
        assert not own or hsts in own, f"location {location.args} answers without HSTS"
    # Browsers ignore HSTS over plain HTTP (RFC 6797 8.1): the plain server does not send it.
    assert not [d for d in plain_server_block(nginx).walk() if d.name == "add_header"]


def test_plain_http_proxies_nothing(nginx: Directive) -> None:
    plain = plain_server_block(nginx)
    assert not [d for d in plain.walk() if d.name in ("proxy_pass", "ssl_certificate")]
    answers = {tuple(loc.args): [d.args for d in loc.find("return")] for loc in plain.find("location")}
    assert answers[("=", "/gateway/healthz")] == [["200", '{"status":"ok"}']]
    ((status, target),) = answers[("/",)]
    assert status == "308" and target.startswith("$")


def documented_self_signed_command() -> str:
    """The ``mkdir -p tls && openssl req -x509 ...`` line (and its continuations) docker-compose.yml gives."""
    comments = [line.strip()[1:].strip() for line in COMPOSE.read_text().splitlines() if line.strip().startswith("#")]
    start = next(index for index, line in enumerate(comments) if "openssl req -x509" in line)
    command = []
    for line in comments[start:]:
        command.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            return " ".join(command)
    pytest.fail("the openssl command in docker-compose.yml does not end")


def test_nginx_accepts_the_documented_self_signed_certificate(tmp_path: Path) -> None:
    """docker-compose.yml's openssl command line, run as written: nginx -t passes, and a client
    trusting that certificate verifies the gateway as localhost and as 127.0.0.1."""
    command = documented_self_signed_command()
    assert "openssl req -x509" in command and "-nodes" in command, command
    subprocess.run(["sh", "-c", command], cwd=tmp_path, check=True, capture_output=True, timeout=30)
    assert {p.name for p in (tmp_path / "tls").iterdir()} == {"fullchain.pem", "privkey.pem"}
    conf = local_nginx_conf(tmp_path, local_ports(), free_port())  # the files there, not a LocalTls
    result = subprocess.run([*nginx_command(conf), "-t"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    with Gateway(tmp_path, free_port()) as gateway:
        trusting = ssl.create_default_context(cafile=str(tmp_path / "tls" / "fullchain.pem"))
        for name in ("localhost", "127.0.0.1"):
            assert handshake(gateway, trusting, name)[0] in ("TLSv1.2", "TLSv1.3")


# --- the gateway, live ---------------------------------------------------------------------------


def handshake(gateway: Gateway, context: ssl.SSLContext, name: str = "127.0.0.1") -> tuple[str, str, str | None]:
    """A TLS handshake with the gateway's HTTPS port: (version, cipher, ALPN protocol)."""
    with (
        socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        return str(tls.version()), tls.cipher()[0], tls.selected_alpn_protocol()  # type: ignore[index]


def pinned(tls: LocalTls, version: ssl.TLSVersion, ciphers: str = "ALL:@SECLEVEL=0") -> ssl.SSLContext:
    """A verifying client that speaks ``version`` only. Security level 0, so OpenSSL 3 does not
    refuse TLS 1.0 and 1.1 on the client's side first: a refusal seen is the server's."""
    context = tls.client_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ssl.TLSVersion.TLSv1 and TLSv1_1 are
        context.minimum_version = context.maximum_version = version
    context.set_ciphers(ciphers)
    return context


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    """The gateway in front of nothing: what nginx answers itself (a handshake, a redirect)."""
    with Gateway(tmp_path, free_port()) as running:
        yield running


def test_only_tls_1_2_and_1_3_are_accepted(gateway: Gateway) -> None:
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        client = pinned(gateway.tls, old)
        with pytest.raises(ssl.SSLError) as refused:
            handshake(gateway, client)
        # The alert came from nginx: "protocol version", a refusal of the version offered.
        assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", refused.value
        # And this very client completes that handshake with a server that accepts the version.
        assert accepts_old_versions(gateway.tls, client) == old.name.replace("_", ".")
    version, cipher, _ = handshake(gateway, pinned(gateway.tls, ssl.TLSVersion.TLSv1_2))
    assert version == "TLSv1.2" and cipher in INTERMEDIATE_TLS12, cipher
    assert handshake(gateway, pinned(gateway.tls, ssl.TLSVersion.TLSv1_3))[0] == "TLSv1.3"
    # TLS 1.2 with no AEAD suite (CBC only, as the old profile allows) is refused too.
    cbc = pinned(gateway.tls, ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError) as no_cipher:
        handshake(gateway, cbc)
    assert no_cipher.value.reason == "SSLV3_ALERT_HANDSHAKE_FAILURE", no_cipher.value


def accepts_old_versions(tls: LocalTls, client: ssl.SSLContext) -> str:
    """The version ``client`` agrees with a Python server that allows TLS 1.0 and 1.1."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server.minimum_version = ssl.TLSVersion.TLSv1
    server.set_ciphers("ALL:@SECLEVEL=0")
    server.load_cert_chain(tls.fullchain, tls.privkey)
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def accept() -> None:
            connection, _ = listener.accept()
            with connection, server.wrap_socket(connection, server_side=True) as accepted:
                accepted.recv(1)  # until the client hangs up

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        with (
            socket.create_connection(listener.getsockname(), timeout=5) as raw,
            client.wrap_socket(raw, server_hostname="127.0.0.1") as tls_socket,
        ):
            version = str(tls_socket.version())
        thread.join(timeout=5)
        return version


def test_sessions_resume_from_the_shared_cache_without_tickets(gateway: Gateway) -> None:
    client = pinned(gateway.tls, ssl.TLSVersion.TLSv1_2)
    with (
        socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as raw,
        client.wrap_socket(raw, server_hostname="127.0.0.1") as first,
    ):
        session = first.session
    assert session is not None and not session.has_ticket
    with (
        socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as raw,
        client.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as second,
    ):
        assert second.session_reused


def test_verification_is_on_and_would_fail_without_the_ca(gateway: Gateway) -> None:
    # Trusting only the system's CAs: "unable to get local issuer certificate" (20). Trusting
    # the CA but asking for another name: "hostname mismatch" (62).
    for client, name, code in ((ssl.create_default_context(), "127.0.0.1", 20), (gateway.ssl, "chat.example.com", 62)):
        with pytest.raises(ssl.SSLCertVerificationError) as unverified:
            handshake(gateway, client, name)
        assert unverified.value.verify_code == code, unverified.value
    curl = subprocess.run(["curl", "-sS", f"{gateway.url}/gateway/healthz"], capture_output=True, timeout=30)
    assert curl.returncode == 60, curl.stderr  # curl: "SSL certificate problem"
    assert handshake(gateway, gateway.ssl)[0] == "TLSv1.3"


def test_http2_is_negotiated_and_http_1_1_still_served(gateway: Gateway) -> None:
    h2 = gateway.tls.client_context()
    h2.set_alpn_protocols(["h2", "http/1.1"])
    assert handshake(gateway, h2)[2] == "h2"
    # WebSocket clients (and aiohttp) ask for HTTP/1.1: nginx upgrades WebSockets on it only.
    h1 = gateway.tls.client_context()
    h1.set_alpn_protocols(["http/1.1"])
    assert handshake(gateway, h1)[2] == "http/1.1"


def plain_request(
    gateway: Gateway, method: str, path: str, body: bytes | None = None, host: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", gateway.http_port, timeout=10)
    try:
        connection.request(method, path, body=body, headers={"Host": host} if host else {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


async def test_plain_http_redirects_to_https_keeping_path_and_query(tmp_path: Path) -> None:
    upstream = EchoUpstream()
    try:
        with Gateway(tmp_path, upstream.start()) as gateway:
            https = gateway.url
            for method, path, body in [
                ("GET", "/applications/tok/chats/1/messages/search?query=hello%20world&page=2", None),
                ("GET", "/applications/tok/chats/1/events?after=0", None),
                ("POST", "/applications/tok/chats/1/messages", b'{"content": "in clear"}'),
                ("POST", "/applications", b"x" * (64 * 1024 + 1)),  # over the body limit: redirected too
                ("GET", "/metrics", None),
                ("GET", "/readyz", None),
            ]:
                status, headers, _ = plain_request(gateway, method, path, body)
                assert status == 308 and headers["location"] == f"{https}{path}", (method, path, status, headers)
                assert "strict-transport-security" not in headers
            # The client's host name is kept; the port is the HTTPS one.
            _, headers, _ = plain_request(
                gateway, "GET", "/applications/tok?x=1", host=f"chat.example.com:{gateway.http_port}"
            )
            assert headers["location"] == f"https://chat.example.com:{gateway.port}/applications/tok?x=1"
            # The gateway's own health check stays on plain HTTP (the container healthcheck).
            status, headers, body = plain_request(gateway, "GET", "/gateway/healthz")
            assert status == 200 and json.loads(body) == {"status": "ok"}
            assert upstream.seen == [], "nothing reaches chatd over plain HTTP"
            # A client that follows the redirect lands on HTTPS, its certificate verified, with its method.
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=gateway.ssl)) as session:
                async with session.post(f"{gateway.http_url}/applications", json={"application": {}}) as answer:
                    assert answer.status == 200 and [r.status for r in answer.history] == [308]
                    assert str(answer.url) == f"{https}/applications"
                    assert answer.headers["Strict-Transport-Security"] == HSTS
            (seen,) = upstream.seen
            assert seen["x-forwarded-proto"] == "https" and seen["content-type"] == "application/json"
    finally:
        upstream.stop()


async def test_api_events_and_websocket_through_https(tmp_path: Path) -> None:
    """A real chatd process behind the gateway, every request over verified HTTPS: the API, the events
    stream unbuffered (HTTP/1.1 and HTTP/2), a WebSocket (wss)."""
    folder = tmp_path / "chatd"
    folder.mkdir()
    async with ChatdProcess(embedded_settings(folder), "all", tmp_path) as process:
        with Gateway(tmp_path, process.port) as gateway:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=gateway.ssl)) as session:
                token, chat = await application_and_chat(session, "over TLS", gateway.url)
                path = f"/applications/{token}/chats/{chat}"

                async def stored() -> bool:  # a new chat is written by the worker, shortly after
                    async with session.get(f"{gateway.url}{path}") as answer:
                        assert answer.headers["Strict-Transport-Security"] == HSTS
                        return answer.status == 200

                await eventually(stored)
                async with session.get(f"{gateway.url}{path}/events") as events:
                    assert events.status == 200 and events.headers["Content-Type"].startswith("text/event-stream")
                    assert events.headers["Strict-Transport-Security"] == HSTS
                    websocket = await session.ws_connect(f"wss://127.0.0.1:{gateway.port}{path}/events")
                    h2_events = await curl_events(gateway, f"{path}/events")
                    try:
                        await created(session, f"{gateway.url}{path}/messages", {"content": "through TLS"})
                        # Each event arrives while its stream stays open: nothing holds it back.
                        assert (await SseStream(events).next()).data["content"] == "through TLS"
                        assert (await WsStream(websocket).next()).data["content"] == "through TLS"
                        assert json.loads(await h2_events.event())["content"] == "through TLS"
                    finally:
                        h2_events.stop()
                    await websocket.close()
            # The API over HTTP/2 as curl speaks it, verifying against the CA.
            out = await run(
                "curl", "--http2", "-sS", "--cacert", str(gateway.tls.ca), "-o", "/dev/null",
                "-w", "%{http_version} %{http_code}", f"{gateway.url}{path}/messages",
            )  # fmt: skip
            assert out == "2 200", out


class CurlEvents:
    """``curl -N --http2`` reading an events stream: its response head, then its ``data:`` lines."""

    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process

    async def head(self) -> list[str]:
        lines = []
        while (line := await self.line()) != "":
            lines.append(line)
        return lines

    async def line(self) -> str:
        assert self.process.stdout is not None
        async with asyncio.timeout(30):
            raw = await self.process.stdout.readline()
        assert raw, "curl's stream ended"
        return raw.decode().rstrip("\r\n")

    async def event(self) -> str:
        while not (line := await self.line()).startswith("data:"):
            pass
        return line.removeprefix("data:").strip()

    def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


async def curl_events(gateway: Gateway, path: str) -> CurlEvents:
    process = await asyncio.create_subprocess_exec(
        *["curl", "--http2", "-sS", "-N", "-D", "-", "--cacert", str(gateway.tls.ca), f"{gateway.url}{path}"],
        stdout=asyncio.subprocess.PIPE,
    )
    stream = CurlEvents(process)
    head = await stream.head()
    assert head[0].split() == ["HTTP/2", "200"], head
    assert f"strict-transport-security: {HSTS}" in [line.lower() for line in head], head
    return stream


async def run(*argv: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, f"{shlex.join(argv)}: {err.decode()}"
    return out.decode()
