"""What the deploy tests share: paths, chatd's view of a command line, and the file parsers.

docker-compose.yml, deploy/Dockerfile, deploy/nginx.conf and deploy/systemd/*.service are read
as data here so the test modules can compare them with what chatd really accepts: its Settings
fields, its command line, its backend URL schemes, its port and body limit. The real nginx runs
deploy/nginx.conf on local ports with a throwaway CA's certificate (``Gateway``, ``LocalTls``).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from chatd.cli import _parser
from chatd.settings import Settings
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
SYSTEMD = ROOT / "deploy" / "systemd"
DOCKERIGNORE = ROOT / ".dockerignore"

# Only what these variables must be set to for the compose file to resolve at all.
REQUIRED_ENV = {
    "CHATD_ADMIN_TOKEN": "test-admin-token",
    "MARIADB_PASSWORD": "test-database-password",
    "RABBITMQ_PASSWORD": "test-broker-password",
}
# Data services by image, with the port their image listens on and where it keeps its data.
DATA_IMAGES = {
    "mariadb": (3306, "/var/lib/mysql"),
    "mysql": (3306, "/var/lib/mysql"),
    "redis": (6379, "/data"),
    "rabbitmq": (5672, "/var/lib/rabbitmq"),
    "elasticsearch": (9200, "/usr/share/elasticsearch/data"),
}
# Which data service a backend URL scheme may point at (what chatd/backends/registry.py builds).
URL_SCHEMES = {
    "database_url": ({"mysql"}, {"mariadb", "mysql"}),
    "redis_url": ({"redis", "rediss"}, {"redis"}),
    "amqp_url": ({"amqp", "amqps"}, {"rabbitmq"}),
    "elasticsearch_url": ({"http", "https"}, {"elasticsearch"}),
}
REAL_BACKENDS = {"mysql", "redis-cache", "redis-lock", "rabbitmq", "elasticsearch"}
SETTING_VARS = {"CHATD_" + f.name.upper() for f in dataclasses.fields(Settings)}


def chatd_environment_reads() -> set[str]:
    """``CHATD_*`` variables the package reads itself, outside Settings (CHATD_SQL_DIR)."""
    pattern = re.compile(r"""environ(?:\.get\(|\[)\s*["'](CHATD_[A-Z0-9_]+)["']""")
    return {name for path in (ROOT / "chatd").rglob("*.py") for name in pattern.findall(path.read_text())}


KNOWN_VARS = SETTING_VARS | chatd_environment_reads()


def parse_chatd(argv: list[str]) -> Any:
    """``chatd``'s own argument parser over ``argv`` (a command line that starts with chatd)."""
    assert argv and Path(argv[0]).name == "chatd", f"not a chatd command: {argv}"
    try:
        return _parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"chatd rejects the command line {argv}")


def effective_settings(env: dict[str, str], argv: list[str]) -> Settings:
    """The settings a ``chatd serve`` process ends up with: env first, flags over it (as cli.main)."""
    args = parse_chatd(argv)
    settings = Settings.from_env(env)
    if args.command != "serve":
        return settings
    return settings.replace(**{name: getattr(args, name) for name in ("host", "port", "role") if getattr(args, name)})


def duration_seconds(text: str) -> float:
    """A compose or systemd duration ("30s", "1m30s", "1min 30s", "90") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", str(text))
    assert parts and "".join(n + u for n, u in parts) == re.sub(r"\s", "", str(text)), f"bad duration {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


# --- docker-compose.yml ----------------------------------------------------------------------


_INTERPOLATION = re.compile(r"\$\$|\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(text: str, env: dict[str, str], seen: list[tuple[str, str, str]] | None = None) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` (and ``-``/``?``) substitution."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group(2):
            name, operator, argument = match.group(2), "", ""
        else:
            parsed = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", match.group(1), re.S)
            assert parsed, f"invalid interpolation {match.group(0)!r}"
            name, operator, argument = parsed.group(1), parsed.group(2) or "", parsed.group(3) or ""
        if seen is not None:
            seen.append((name, operator, argument))
        value = env.get(name)
        missing = value is None or (operator.startswith(":") and value == "")
        if operator in (":-", "-"):
            return argument if missing else str(value)
        if operator in (":?", "?") and missing:
            raise KeyError(f"{name} is required: {argument}")
        if operator in (":+", "+"):
            return "" if missing else argument
        return "" if value is None else value

    return _INTERPOLATION.sub(substitute, text)


def resolve(node: Any, env: dict[str, str], seen: list[tuple[str, str, str]] | None = None) -> Any:
    if isinstance(node, str):
        return interpolate(node, env, seen)
    if isinstance(node, dict):
        return {key: resolve(value, env, seen) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(value, env, seen) for value in node]
    return node


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=value list form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def image_name(service: dict[str, Any]) -> str:
    """``docker.elastic.co/elasticsearch/elasticsearch:8.19.21`` -> ``elasticsearch``."""
    return str(service.get("image", "")).rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]


def chatd_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    built = {
        str(s.get("image"))
        for s in compose["services"].values()
        if isinstance(s.get("build"), dict) and s["build"].get("dockerfile") == "deploy/Dockerfile"
    }
    return {
        name: s
        for name, s in compose["services"].items()
        if s.get("image") in built
        or (isinstance(s.get("build"), dict) and s["build"].get("dockerfile") == "deploy/Dockerfile")
    }


def data_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if image_name(s) in DATA_IMAGES}


def gateway(compose: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    gateways = [(name, s) for name, s in compose["services"].items() if image_name(s) == "nginx"]
    assert len(gateways) == 1, "one nginx gateway service"
    return gateways[0]


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command")
    assert cmd, "every chatd service says which chatd command it runs"
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def published_ports(service: dict[str, Any]) -> list[tuple[str, str, int]]:
    """``(host_ip, published, target)`` for each entry of ``ports``, short or long syntax."""
    result = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            result.append((str(entry.get("host_ip", "")), str(entry.get("published", "")), int(entry["target"])))
            continue
        parts = str(entry).split("/")[0].rsplit(":", 2)
        host_ip, published, target = ([""] * (3 - len(parts)) + parts) if len(parts) < 3 else parts
        result.append((host_ip, published, int(target)))
    return result


def serve_settings(compose: dict[str, Any]) -> dict[str, Settings]:
    return {
        name: effective_settings(environment(s), command(s))
        for name, s in chatd_services(compose).items()
        if parse_chatd(command(s)).command == "serve"
    }


# --- deploy/Dockerfile and .dockerignore ---------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """``[(INSTRUCTION, arguments), ...]`` per build stage; continuation lines joined."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    stages: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        if not line.strip():
            continue
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def dockerfile_instructions(final_stage: bool = False) -> list[str]:
    stages = dockerfile_stages()
    return [name for stage in (stages[-1:] if final_stage else stages) for name, _ in stage]


def final(instruction: str) -> list[str]:
    return [arguments for name, arguments in dockerfile_stages()[-1] if name == instruction]


def assignments(text: str) -> dict[str, str]:
    """``A=1 B="two words"`` (Dockerfile ENV, systemd Environment=) as a dict."""
    return dict(tuple(item.split("=", 1)) for item in shlex.split(text))  # type: ignore[misc]


def dockerfile_env() -> dict[str, str]:
    return {key: value for arguments in final("ENV") for key, value in assignments(arguments).items()}


def dockerfile_exposed() -> set[int]:
    return {int(port.split("/")[0]) for arguments in final("EXPOSE") for port in arguments.split()}


# --- deploy/nginx.conf ---------------------------------------------------------------------------


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None
    line: int = 0

    def find(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def walk(self) -> Iterator[Directive]:
        for child in self.block or []:
            yield child
            yield from child.walk()


def nginx_parse(text: str) -> Directive:
    """nginx's grammar: words and quoted strings, ``;`` ends a directive, ``{ }`` a block."""
    tokens: list[tuple[str, int]] = []
    for match in re.finditer(
        r"#[^\n]*|\"((?:\\.|[^\"\\])*)\"|'((?:\\.|[^'\\])*)'|([{};])|([^\s{};\"'#][^\s{};]*)", text
    ):
        if match.group(0).startswith("#"):
            continue
        line = text.count("\n", 0, match.start()) + 1
        word = next(g for g in match.groups() if g is not None)
        tokens.append((("\0" + word) if match.group(3) else word, line))
    root = Directive("main", [], [])
    stack, words = [root], list[str]()
    for token, line in tokens:
        if token in ("\0;", "\0{"):
            assert words, f"nginx.conf:{line}: empty directive"
            directive = Directive(words[0], words[1:], [] if token == "\0{" else None, line)
            stack[-1].block.append(directive)  # type: ignore[union-attr]
            if token == "\0{":
                stack.append(directive)
            words = []
        elif token == "\0}":
            assert not words and len(stack) > 1, f"nginx.conf:{line}: unbalanced '}}'"
            stack.pop()
        else:
            words.append(token)
    assert len(stack) == 1 and not words, "nginx.conf: unclosed block or missing ';'"
    return root


def http_block(nginx: Directive) -> Directive:
    (http,) = nginx.find("http")
    return http


def listen_port(listen: Directive) -> int:
    """``listen 8443 ssl http2;`` -> 8443 (an address before the port is allowed)."""
    return int(listen.args[0].rsplit(":", 1)[-1])


def serves_tls(server: Directive) -> bool:
    return any("ssl" in listen.args[1:] for listen in server.find("listen"))


def server_block(nginx: Directive) -> Directive:
    """The server that serves chatd: the HTTPS one."""
    (server,) = [s for s in http_block(nginx).find("server") if serves_tls(s)]
    return server


def plain_server_block(nginx: Directive) -> Directive:
    """The plain-HTTP server: the health check, and a redirect to HTTPS for everything else."""
    (server,) = [s for s in http_block(nginx).find("server") if not serves_tls(s)]
    return server


def gateway_listens(nginx: Directive | None = None) -> dict[int, bool]:
    """``{port: serves TLS}`` for each port deploy/nginx.conf listens on."""
    nginx = nginx or nginx_parse(NGINX_CONF.read_text())
    return {
        listen_port(listen): serves_tls(server)
        for server in http_block(nginx).find("server")
        for listen in server.find("listen")
    }


def nginx_binary() -> str:
    binary = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if binary is None:
        pytest.fail("the nginx binary is missing: apt-get install -y nginx (Makefile install step)")
    return binary


# Where deploy/nginx.conf reads the deployment's certificate (fullchain.pem) and key (privkey.pem).
TLS_DIR = "/etc/nginx/tls"
# The Strict-Transport-Security value on every HTTPS answer (no includeSubDomains: see nginx.conf).
HSTS = "max-age=63072000"


def local_ports() -> dict[int, int]:
    """A free local port for each port deploy/nginx.conf listens on: ``{8080: ..., 8443: ...}``."""
    return {port: free_port() for port in gateway_listens()}


def local_nginx_conf(tmp_path: Path, ports: dict[int, int], upstream: int, edits: dict[str, str] | None = None) -> Path:
    """deploy/nginx.conf with the compose host names and ports made local, and temp paths writable.

    ``ports`` maps each port the file listens on to a local one (``local_ports()``); the
    redirect to HTTPS names the local HTTPS port. The certificate and key are read from
    ``tmp_path/tls`` instead of /etc/nginx/tls: a throwaway CA's (``LocalTls``), made there
    unless the directory exists already (a test's own files). ``edits`` replace text that must
    occur in the file (a shorter timeout for a test, say).
    """
    text = NGINX_CONF.read_text()
    text, upstreams = re.subn(r"(\bserver\s+)api:\d+", rf"\g<1>127.0.0.1:{upstream}", text)

    def local_listen(match: re.Match[str]) -> str:
        assert int(match.group(1)) in ports, f"no local port for listen {match.group(1)}"
        return f"listen 127.0.0.1:{ports[int(match.group(1))]}"

    text, listens = re.subn(r"\blisten\s+(\d+)\b", local_listen, text)
    text, redirects = re.subn(
        r"(https://\$host:)(\d+)", lambda match: f"{match.group(1)}{ports[int(match.group(2))]}", text
    )
    text, tls_files = re.subn(re.escape(TLS_DIR) + r"/(fullchain|privkey)\.pem\b", rf"{tmp_path}/tls/\1.pem", text)
    assert upstreams == 1 and listens == len(ports) and redirects == 1 and tls_files == 2
    if not (tmp_path / "tls").exists():
        LocalTls.create(tmp_path / "tls")
    for old, new in (edits or {}).items():
        assert old in text, f"nginx.conf has no {old!r} to edit"
        text = text.replace(old, new)
    temp = "".join(
        f"    {kind}_temp_path {tmp_path}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = text.replace("http {\n", "http {\n" + temp, 1)
    path = tmp_path / "nginx.conf"
    path.write_text(text)
    return path


def nginx_command(conf: Path) -> list[str]:
    return [
        nginx_binary(),
        "-p",
        str(conf.parent),
        "-c",
        str(conf),
        "-e",
        str(conf.parent / "error.log"),
        "-g",
        f"pid {conf.parent}/nginx.pid;",
    ]


class LocalTls:
    """A throwaway CA and a server certificate it signed for 127.0.0.1 and localhost, in ``folder``.

    ``ca.pem`` is what clients trust; ``fullchain.pem`` and ``privkey.pem`` are what nginx
    serves (the names deploy/nginx.conf reads in /etc/nginx/tls). P-256 keys: made in
    milliseconds.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.ca = folder / "ca.pem"
        self.fullchain = folder / "fullchain.pem"
        self.privkey = folder / "privkey.pem"

    @classmethod
    def create(cls, folder: Path) -> LocalTls:
        tls = cls(folder)
        folder.mkdir(mode=0o700, parents=True)
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chatd test CA")])

        def issued(subject: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
            return (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(ca_name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            )

        def usage(**allowed: bool) -> x509.KeyUsage:
            names = ["digital_signature", "content_commitment", "key_encipherment", "data_encipherment"]
            names += ["key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"]
            return x509.KeyUsage(**{name: allowed.get(name, False) for name in names})

        ca = (
            issued(ca_name, ca_key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        server = (
            issued(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]), key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        tls.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        tls.fullchain.write_bytes(server.public_bytes(serialization.Encoding.PEM))
        tls.privkey.touch(mode=0o600)
        tls.privkey.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return tls

    def client_context(self) -> ssl.SSLContext:
        """A client's defaults (certificate and host name verified), trusting this CA only."""
        return ssl.create_default_context(cafile=str(self.ca))


class Gateway:
    """The real nginx running deploy/nginx.conf in front of ``upstream`` (a local port).

    It serves HTTPS on ``port`` (``url``) with a throwaway CA's certificate (``tls``; clients
    verify it with ``ssl``, or ``session()``) and plain HTTP on ``http_port`` (``http_url``).
    What it writes is kept: its standard output (the access log), its standard error (the
    error log the configuration names) and the start-up error log (``-e``). ``with Gateway(...)
    as gateway:`` starts it and waits until it listens; leaving stops it, so every line is out.
    """

    def __init__(self, folder: Path, upstream: int, edits: dict[str, str] | None = None):
        self.folder = folder
        self.ports = local_ports()
        listens = gateway_listens()
        (https,) = [port for port, tls in listens.items() if tls]
        (plain,) = [port for port, tls in listens.items() if not tls]
        self.port, self.http_port = self.ports[https], self.ports[plain]
        self.conf = local_nginx_conf(folder, self.ports, upstream, edits)
        self.tls = LocalTls(folder / "tls")
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Gateway:
        with open(self.folder / "stdout.log", "wb") as out, open(self.folder / "stderr.log", "wb") as err:
            self.process = subprocess.Popen([*nginx_command(self.conf), "-g", "daemon off;"], stdout=out, stderr=err)
        deadline = time.monotonic() + 10
        while True:
            assert self.process.poll() is None, self.error_log()
            try:
                for port in self.ports.values():
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return self
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.05)

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @cached_property
    def ssl(self) -> ssl.SSLContext:
        return self.tls.client_context()

    def session(self, **connector: Any) -> aiohttp.ClientSession:
        """A client of ``url`` that verifies the gateway's certificate; ``connector``: TCPConnector's options."""
        return aiohttp.ClientSession(self.url, connector=aiohttp.TCPConnector(ssl=self.ssl, **connector))

    def access_log(self) -> list[str]:
        return (self.folder / "stdout.log").read_text().splitlines()

    def error_log(self) -> list[str]:
        files = [self.folder / "stderr.log", self.folder / "error.log"]
        return [line for path in files if path.exists() for line in path.read_text().splitlines()]


# --- deploy/systemd ------------------------------------------------------------------------------


@dataclass
class Unit:
    path: Path
    sections: dict[str, dict[str, list[str]]]
    documented_env: dict[str, str]

    def values(self, section: str, key: str) -> list[str]:
        return self.sections.get(section, {}).get(key, [])

    def value(self, section: str, key: str) -> str:
        values = self.values(section, key)
        assert values, f"{self.path.name}: no {key}= in [{section}]"
        return values[-1]


def parse_unit(path: Path) -> Unit:
    sections: dict[str, dict[str, list[str]]] = {}
    documented = {}
    current = None
    for line in re.sub(r"\\\n", " ", path.read_text()).splitlines():
        line = line.strip()
        documented_line = re.match(r"#\s+(CHATD_[A-Z0-9_]+)=(.*)", line)
        if documented_line:
            documented[documented_line.group(1)] = documented_line.group(2).strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None and "=" in line, f"{path.name}: {line!r}"
        key, value = (part.strip() for part in line.split("=", 1))
        current.setdefault(key, []).append(value)
    return Unit(path, sections, documented)


def units() -> dict[str, Unit]:
    return {path.stem: parse_unit(path) for path in sorted(SYSTEMD.glob("*.service"))}


def unit_environment(unit: Unit) -> dict[str, str]:
    return {key: value for text in unit.values("Service", "Environment") for key, value in assignments(text).items()}


def systemd_analyze_and_stub(folder: Path) -> tuple[str, Path]:
    """``systemd-analyze``'s path, and an executable stub to put where the units name chatd."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: `make ops-tools` installs it (Debian package systemd)"
    stub = folder / "bin" / "chatd"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    return analyze, stub
