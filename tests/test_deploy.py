"""The deployment files, checked against the code they deploy: there is no Docker engine here.

docker-compose.yml, deploy/Dockerfile, deploy/nginx.conf, deploy/systemd/*.service and
.dockerignore are read as data and compared with what chatd really accepts: its Settings
fields, its command line, its backend URL schemes, its port and body limit. The nginx
configuration is also run by the real nginx binary (apt package ``nginx``), which must be
installed: a gateway test skipped in CI would be a gateway never tested.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import math
import random
import re
import shlex
import shutil
import socket
import string
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from chatd.backends.registry import make_backends
from chatd.cli import _parser
from chatd.handlers.middleware import _HTTP_CODES
from chatd.settings import ROLES, Settings
from tests.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
SYSTEMD = ROOT / "deploy" / "systemd"
DOCKERIGNORE = ROOT / ".dockerignore"

# Only what these variables must be set to for the compose file to resolve at all.
REQUIRED_ENV = {"CHATD_ADMIN_TOKEN": "test-admin-token"}
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
REAL_BACKENDS = {"mysql", "redis-counters", "redis-cache", "redis-lock", "rabbitmq", "elasticsearch"}
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


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any]) -> dict[str, Any]:
    resolved: dict[str, Any] = resolve(raw_compose, dict(REQUIRED_ENV))
    return resolved


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
        str(s.get("image")) for s in compose["services"].values()
        if isinstance(s.get("build"), dict) and s["build"].get("dockerfile") == "deploy/Dockerfile"
    }
    return {name: s for name, s in compose["services"].items()
            if s.get("image") in built or (isinstance(s.get("build"), dict)
                                           and s["build"].get("dockerfile") == "deploy/Dockerfile")}


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
    return {name: effective_settings(environment(s), command(s)) for name, s in chatd_services(compose).items()
            if parse_chatd(command(s)).command == "serve"}


def test_compose_has_the_reference_architecture(compose: dict[str, Any]) -> None:
    images = Counter(image_name(s) for s in data_services(compose).values())
    assert images["mariadb"] + images["mysql"] == 1
    assert images["redis"] == images["rabbitmq"] == images["elasticsearch"] == 1
    roles = {settings.role for settings in serve_settings(compose).values()}
    assert {"api", "worker"} <= roles, "an api and a worker service"
    commands = [parse_chatd(command(s)).command for s in chatd_services(compose).values()]
    assert commands.count("migrate") == 1
    gateway(compose)


def test_every_chatd_variable_is_a_setting(raw_compose: dict[str, Any], compose: dict[str, Any]) -> None:
    assert "CHATD_SQL_DIR" in KNOWN_VARS - SETTING_VARS, "chatd/migrations.py reads CHATD_SQL_DIR"
    named = [name for s in compose["services"].values() for name in environment(s) if name.startswith("CHATD_")]
    seen: list[tuple[str, str, str]] = []
    resolve(raw_compose, dict(REQUIRED_ENV), seen)
    named += [name for name, _, _ in seen if name.startswith("CHATD_")]
    named += [name for name in dockerfile_env() if name.startswith("CHATD_")]
    for unit in units().values():
        named += list(unit_environment(unit)) + list(unit.documented_env)
    assert named, "no CHATD_* variable found at all"
    unknown = sorted(set(named) - KNOWN_VARS)
    assert not unknown, f"not chatd settings (see chatd/settings.py): {unknown}"


def test_chatd_services_run_real_commands(compose: dict[str, Any]) -> None:
    services = chatd_services(compose)
    assert services
    for name, service in services.items():
        args = parse_chatd(command(service))
        if args.command == "serve":
            role = effective_settings(environment(service), command(service)).role
            assert role in ROLES
            assert name not in ROLES or role == name, f"service {name} runs role {role}"
        else:
            assert args.command == "migrate", f"{name}: a long-running chatd service must `serve`"


def test_depends_on_targets_exist_and_are_healthy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    image_healthcheck = "HEALTHCHECK" in dockerfile_instructions(final_stage=True)
    for name, service in services.items():
        for target, condition in depends_on(service).items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert condition in ("service_healthy", "service_completed_successfully"), \
                f"{name} -> {target}: started is not ready"
            if condition == "service_healthy":
                check = services[target].get("healthcheck") or {}
                has_check = bool(check.get("test")) or (target in chatd_services(compose) and image_healthcheck)
                assert has_check and not check.get("disable"), f"{target} has no healthcheck to wait for"


def test_migrations_run_once_before_the_servers(compose: dict[str, Any]) -> None:
    services = chatd_services(compose)
    migrate = [name for name, s in services.items() if parse_chatd(command(s)).command == "migrate"]
    assert len(migrate) == 1
    assert str(services[migrate[0]].get("restart", "no")) == "no", "a one-shot must not be restarted"
    database = urlsplit(Settings.from_env(environment(services[migrate[0]])).database_url).hostname or ""
    assert depends_on(services[migrate[0]]).get(database) == "service_healthy"
    for name in serve_settings(compose):
        assert depends_on(services[name]).get(migrate[0]) == "service_completed_successfully", name


def test_chatd_services_wait_for_every_backend_they_use(compose: dict[str, Any]) -> None:
    # `chatd migrate` opens every configured backend too, not only the store.
    for name, service in chatd_services(compose).items():
        settings = Settings.from_env(environment(service))
        for key in URL_SCHEMES:
            host = urlsplit(getattr(settings, key) or "").hostname
            assert host, f"{name}: {key} unset: chatd would silently use the embedded backend"
            assert depends_on(service).get(host) == "service_healthy", f"{name} starts before {host} is up"


def test_compose_configures_the_real_backends(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in chatd_services(compose).items():
        settings = Settings.from_env(environment(service))  # validates, as chatd does at start
        backends = {backend.name for backend in make_backends(settings).all()}
        assert backends == REAL_BACKENDS, f"{name} would run {backends}"
        for key, (schemes, images) in URL_SCHEMES.items():
            url = urlsplit(getattr(settings, key))
            assert url.scheme in schemes, f"{name}: {key} scheme {url.scheme}"
            assert url.hostname in services, f"{name}: {key} host {url.hostname} is no compose service"
            target = image_name(services[url.hostname])
            assert target in images, f"{name}: {key} points at a {target}"
            assert (url.port or DATA_IMAGES[target][0]) == DATA_IMAGES[target][0]


def test_urls_carry_the_credentials_the_servers_are_given(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for service in chatd_services(compose).values():
        settings = Settings.from_env(environment(service))
        db = urlsplit(settings.database_url)
        db_env = environment(services[db.hostname])
        prefix = "MARIADB_" if image_name(services[db.hostname]) == "mariadb" else "MYSQL_"
        assert (db.username, unquote(db.password or "")) == (db_env[prefix + "USER"], db_env[prefix + "PASSWORD"])
        assert db.path.lstrip("/") == db_env[prefix + "DATABASE"]
        amqp = urlsplit(settings.amqp_url or "")
        mq_env = environment(services[amqp.hostname])
        assert (amqp.username, unquote(amqp.password or "")) == (
            mq_env.get("RABBITMQ_DEFAULT_USER"), mq_env.get("RABBITMQ_DEFAULT_PASS")), \
            "RabbitMQ's default guest user cannot log in from another host"


def test_elasticsearch_is_a_small_single_node_without_security(compose: dict[str, Any]) -> None:
    (service,) = [s for s in data_services(compose).values() if image_name(s) == "elasticsearch"]
    env = environment(service)
    assert env.get("discovery.type") == "single-node"
    assert env.get("xpack.security.enabled") == "false", "chatd's URL carries no credentials"
    for name, chatd in chatd_services(compose).items():
        url = Settings.from_env(environment(chatd)).elasticsearch_url or ""
        assert url.startswith("http://"), f"{name}: without security Elasticsearch speaks plain http"
    heap = re.search(r"-Xmx(\d+)([mg])", env.get("ES_JAVA_OPTS", ""))
    assert heap and int(heap.group(1)) * (1024 if heap.group(2) == "g" else 1) <= 1024, "a small, fixed heap"


def test_data_services_have_healthchecks_and_named_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in data_services(compose).items():
        assert (service.get("healthcheck") or {}).get("test"), f"{name} has no healthcheck"
        mounts = {}
        for volume in service.get("volumes") or []:
            source, target = (volume["source"], volume["target"]) if isinstance(volume, dict) \
                else str(volume).split(":")[:2]
            mounts[target] = source
        data_dir = DATA_IMAGES[image_name(service)][1]
        assert data_dir in mounts, f"{name}: {data_dir} is not on a volume"
        assert mounts[data_dir] in declared, f"{name}: {mounts[data_dir]} is not a named volume"


def test_api_is_replicated_and_listens_where_the_image_exposes(compose: dict[str, Any]) -> None:
    servers = serve_settings(compose)
    api = [name for name, settings in servers.items() if settings.role in ("api", "all")]
    services = compose["services"]
    replicas = sum(int((services[name].get("deploy") or {}).get("replicas", 1)) for name in api)
    assert replicas >= 2, "at least two api replicas behind the gateway"
    for name in api:
        assert "container_name" not in services[name], "a fixed container name cannot be replicated"
    for name, settings in servers.items():
        assert settings.host == "0.0.0.0", f"{name} listens on {settings.host}: unreachable from other containers"
        assert settings.port in dockerfile_exposed(), f"{name} listens on {settings.port}, the image exposes another"


def test_only_the_gateway_publishes_host_ports(compose: dict[str, Any]) -> None:
    gateway_name, gateway_service = gateway(compose)
    assert published_ports(gateway_service), "the gateway is published"
    for name, service in compose["services"].items():
        if name == gateway_name:
            continue
        for host_ip, _, target in published_ports(service):
            assert image_name(service) == "rabbitmq" and target == 15672, f"{name} publishes {target}"
            assert host_ip == "127.0.0.1", "the RabbitMQ management UI stays on the loopback interface"


def test_chatd_gets_time_to_drain_before_sigkill(compose: dict[str, Any]) -> None:
    for name, service in chatd_services(compose).items():
        grace = duration_seconds(service.get("stop_grace_period", "10s"))
        timeout = Settings.from_env(environment(service)).shutdown_timeout_seconds
        assert grace > timeout, f"{name}: killed after {grace}s, drains for up to {timeout}s"


def test_secrets_come_from_the_environment(raw_compose: dict[str, Any]) -> None:
    seen: list[tuple[str, str, str]] = []
    resolve(raw_compose, dict(REQUIRED_ENV), seen)
    with pytest.raises(KeyError, match="CHATD_ADMIN_TOKEN"):
        resolve(raw_compose, {})  # no committed default for the token the gateway exposes
    header = "\n".join(line for line in COMPOSE.read_text().splitlines() if line.startswith("#"))
    for name, _, _ in seen:
        assert name in header, f"${{{name}}} is not documented at the top of docker-compose.yml"
    secret_name = re.compile(r"(PASSWORD|PASS|SECRET|TOKEN)$", re.I)
    for service_name, service in raw_compose["services"].items():
        for key, value in environment(service).items():
            if secret_name.search(key) and value.lower() not in ("0", "1", "yes", "no", "true", "false"):
                assert re.fullmatch(r"\$\{[^}]+\}", value), f"{service_name}: {key} is a committed literal"
            for url in re.findall(r"[a-z]+://[^\s]+", value):
                password = urlsplit(url).password
                assert password is None or password.startswith("${"), f"{service_name}: password in {key}"


def looks_random(token: str) -> bool:
    """A long hex string, or mixed-case letters with digits spread evenly (base64, urlsafe)."""
    if re.fullmatch(r"[0-9a-fA-F]{32,}", token):
        return True
    entropy = -sum(n / len(token) * math.log2(n / len(token)) for n in Counter(token).values())
    return entropy > 4.0 and all(re.search(chars, token) for chars in ("[a-z]", "[A-Z]", "[0-9]"))


def test_no_secret_looking_literals_are_committed() -> None:
    sample = random.Random(0)
    assert looks_random("".join(sample.choices(string.hexdigits.lower()[:16], k=64)))
    assert looks_random("".join(sample.choices(string.ascii_letters + string.digits + "-_", k=43)))
    files = [COMPOSE, DOCKERFILE, NGINX_CONF, DOCKERIGNORE, *SYSTEMD.glob("*.service")]
    for path in files:
        text = path.read_text()
        assert "PRIVATE KEY" not in text, path
        for token in re.findall(r"[A-Za-z0-9+/_=-]{20,}", text):
            assert not looks_random(token), f"{path.name}: {token!r} looks like a secret"


# --- deploy/Dockerfile and .dockerignore ---------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """``[(INSTRUCTION, arguments), ...]`` per build stage; continuation lines joined."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
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


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), "exec form: chatd must be PID 1 to get SIGTERM"
    return [str(part) for part in value]


def test_dockerfile_builds_from_python_311_slim() -> None:
    stages = dockerfile_stages()
    args = dict(a.split("=", 1) for name, a in stages[0] if name == "ARG" and "=" in a)
    names = set()
    for stage in stages[1:]:
        words = stage[0][1].split()
        base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
        if words[1:2] == ["AS"] or words[1:2] == ["as"]:
            names.add(words[2])
        assert base in names or re.fullmatch(r"python:3\.11-slim(-\w+)?", base), f"base image {base}"
    assert any("pip install ." in a for stage in stages for name, a in stage if name == "RUN")


def test_dockerfile_runs_chatd_unprivileged_with_health_and_sigterm() -> None:
    (user,) = final("USER")
    assert user.split(":")[0] not in ("root", "0"), "runs as root"
    (cmd,) = final("CMD")
    argv = exec_form(cmd)
    settings = effective_settings({}, argv)
    assert parse_chatd(argv).command == "serve" and settings.host == "0.0.0.0"
    assert dockerfile_exposed() == {Settings().port}
    (check,) = final("HEALTHCHECK")
    assert "/healthz" in check and str(Settings().port) in check
    assert final("STOPSIGNAL") == ["SIGTERM"]
    assert not final("ENTRYPOINT"), "compose commands start with `chatd`"


def test_dockerfile_ships_the_migrations_where_chatd_reads_them() -> None:
    sql_dir = dockerfile_env().get("CHATD_SQL_DIR")
    assert sql_dir, "pip install . leaves sql/ behind: CHATD_SQL_DIR must point at a copy"
    copies = [shlex.split(a) for a in final("COPY") if not a.startswith("--from")]
    assert ["sql", sql_dir] in [c[-2:] for c in copies], f"sql/ is not copied to {sql_dir}"
    assert sorted((ROOT / "sql" / "mysql").glob("*.sql")), "no MySQL migrations to ship"


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").strip("/")
        regex = "".join(".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?"
                        else re.escape(part) for part in re.split(r"(\*\*|\*|\?)", pattern))
        rules.append((negate, re.compile(regex.replace(".*/", "(?:.*/)?"))))
    return rules


def docker_ignores(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, pattern in dockerignore_rules():
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_package_and_drops_the_rest() -> None:
    needed = ["setup.cfg", "pyproject.toml", "chatd/__init__.py", "chatd/backends/registry.py",
              *[str(p.relative_to(ROOT)) for p in (ROOT / "sql").rglob("*.sql")]]
    for path in needed:
        assert not docker_ignores(path), f"{path} is left out of the build context"
    for path in [".venv/bin/python", ".git/HEAD", ".env", "chatd.db", "tests/conftest.py",
                 "chatd/__pycache__/cli.cpython-311.pyc", "chatd.egg-info/PKG-INFO"]:
        assert docker_ignores(path), f"{path} would be sent to the image build"


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
    for match in re.finditer(r"#[^\n]*|\"((?:\\.|[^\"\\])*)\"|'((?:\\.|[^'\\])*)'|([{};])|([^\s{};\"'#][^\s{};]*)",
                             text):
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


@pytest.fixture(scope="module")
def nginx() -> Directive:
    return nginx_parse(NGINX_CONF.read_text())


def http_block(nginx: Directive) -> Directive:
    (http,) = nginx.find("http")
    return http


def server_block(nginx: Directive) -> Directive:
    (server,) = http_block(nginx).find("server")
    return server


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
        if location.args[0] in ("~", "~*") and re.search(location.args[1], path,
                                                         re.I if location.args[0] == "~*" else 0):
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
    assert sorted(defined.values()) == ["100r/s", "50r/s"]
    server = server_block(nginx)
    by_rate = {rate: name for name, rate in defined.items()}
    for path in ["/applications/tok/chats", "/applications/tok/chats/", "/applications/tok/chats/7",
                 "/applications/tok/chats/7/messages", "/applications/tok/chats/7/messages/search"]:
        assert by_rate["50r/s"] in limits(select_location(server, path)), f"{path} is not held to 50 r/s"
    for path in ["/applications", "/applications/tok", "/applications/tok/chatsx", "/healthz", "/readyz"]:
        location = select_location(server, path)
        assert limits(location) == {by_rate["100r/s"]}, f"{path}: {limits(location)}"
    assert http_block(nginx).find("limit_req_status")[0].args == ["429"]


def test_nginx_balances_least_connections_over_the_api(nginx: Directive, compose: dict[str, Any]) -> None:
    upstreams = {u.args[0]: u for u in http_block(nginx).find("upstream")}
    assert len(upstreams) == 1
    (name, upstream), = upstreams.items()
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


def test_nginx_is_wired_into_compose(nginx: Directive, compose: dict[str, Any]) -> None:
    _, service = gateway(compose)
    mounts = [str(v).split(":") for v in service.get("volumes") or []]
    assert ["./deploy/nginx.conf", "/etc/nginx/nginx.conf", "ro"] in mounts
    listens = {int(d.args[0].rsplit(":", 1)[-1]) for d in server_block(nginx).find("listen")}
    assert {target for _, _, target in published_ports(service)} <= listens
    assert depends_on(service) and all(
        serve_settings(compose)[name].role in ("api", "all") for name in depends_on(service))


# --- nginx itself: syntax and behaviour --------------------------------------------------------


def nginx_binary() -> str:
    binary = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if binary is None:
        pytest.fail("the nginx binary is missing: apt-get install -y nginx (Makefile install step)")
    return binary


def local_nginx_conf(tmp_path: Path, listen: int, upstream: int) -> Path:
    """deploy/nginx.conf with the compose host names and ports made local, and temp paths writable."""
    text = NGINX_CONF.read_text()
    text, upstreams = re.subn(r"(\bserver\s+)api:\d+", rf"\g<1>127.0.0.1:{upstream}", text)
    text, listens = re.subn(r"\blisten\s+\d+;", f"listen 127.0.0.1:{listen};", text)
    assert upstreams == 1 and listens == 1
    temp = "".join(f"    {kind}_temp_path {tmp_path}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi",
                                                                               "uwsgi", "scgi"))
    text = text.replace("http {\n", "http {\n" + temp, 1)
    path = tmp_path / "nginx.conf"
    path.write_text(text)
    return path


def nginx_command(conf: Path) -> list[str]:
    return [nginx_binary(), "-p", str(conf.parent), "-c", str(conf), "-e", str(conf.parent / "error.log"),
            "-g", f"pid {conf.parent}/nginx.pid;"]


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    conf = local_nginx_conf(tmp_path, free_port(), free_port())
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
def gateway_port(tmp_path: Path) -> Iterator[tuple[int, EchoUpstream]]:
    upstream = EchoUpstream()
    port = free_port()
    conf = local_nginx_conf(tmp_path, port, upstream.start())
    with open(tmp_path / "stderr.log", "wb") as log:
        process = subprocess.Popen([*nginx_command(conf), "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, (tmp_path / "stderr.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.05)
        yield port, upstream
    finally:
        process.terminate()
        process.wait(timeout=10)
        upstream.stop()


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, connection: http.client.HTTPConnection | None = None,
            ) -> tuple[int, dict[str, str], bytes]:
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        if connection is None:
            conn.close()


def test_gateway_behaviour(gateway_port: tuple[int, EchoUpstream]) -> None:
    port, upstream = gateway_port
    # The client's request id reaches the api; without one, nginx makes one up.
    status, _, body = request(port, "GET", "/applications", headers={"X-Request-Id": "req-42"})
    assert status == 200 and json.loads(body)["headers"]["x-request-id"] == "req-42"
    status, _, body = request(port, "GET", "/applications")
    assert status == 200 and re.fullmatch(r"[0-9a-f]{32}", json.loads(body)["headers"]["x-request-id"])
    # Bodies over chatd's limit stop at the gateway, in chatd's error shape.
    status, headers, body = request(port, "POST", "/applications", body=b"x" * (64 * 1024 + 1),
                                    headers={"Content-Type": "application/json", "X-Request-Id": "big"})
    assert status == 413 and json.loads(body)["error"]["code"] == "body_too_large"
    assert headers["content-type"].startswith("application/json") and headers["x-request-id"] == "big"
    status, _, body = request(port, "GET", "/metrics")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    # 150 requests fit the general limit (100 r/s, burst 200) however fast they come; 400 to the
    # chat endpoints run into their 50 r/s (burst 100) unless they took over 6 s.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    general = Counter(request(port, "GET", "/applications", connection=connection)[0] for _ in range(150))
    assert general == {200: 150}, general
    chats: Counter[int] = Counter()
    limited: tuple[dict[str, str], bytes] | None = None
    started = time.monotonic()
    for _ in range(400):
        status, headers, body = request(port, "GET", "/applications/tok/chats", connection=connection)
        chats[status] += 1
        limited = (headers, body) if status == 429 else limited
    elapsed = time.monotonic() - started
    connection.close()
    assert chats[429] > 0 and set(chats) <= {200, 429}, f"{chats} in {elapsed:.2f}s"
    assert limited is not None
    headers, body = limited
    assert json.loads(body)["error"]["code"] == "rate_limited"
    assert headers["content-type"].startswith("application/json") and headers["retry-after"] == "1"
    # No replica answering is a JSON 502 too.
    upstream.stop()
    status, headers, body = request(port, "GET", "/applications", headers={"X-Request-Id": "down"})
    assert status == 502 and json.loads(body)["error"]["code"] == "bad_gateway"
    assert headers["x-request-id"] == "down"


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


def exec_start(unit: Unit) -> list[str]:
    return shlex.split(unit.value("Service", "ExecStart").lstrip("-@+!:"))


def test_systemd_units_run_api_and_worker(nginx: Directive) -> None:
    found = units()
    addresses = {}
    for role in ("api", "worker"):
        unit = found[f"chatd-{role}"]
        env = {**unit.documented_env, **unit_environment(unit)}
        settings = effective_settings(env, exec_start(unit))
        assert parse_chatd(exec_start(unit)).command == "serve" and settings.role == role
        assert make_backends(settings).all()[0].name == "mysql", "the documented env selects the real store"
        addresses[role] = (settings.host, settings.port)
        assert unit.value("Service", "EnvironmentFile") == "/etc/chatd/chatd.env"
        assert unit.value("Service", "Restart") == "always"
        assert unit.value("Service", "KillSignal") == "SIGTERM"
        stop = duration_seconds(unit.value("Service", "TimeoutStopSec"))
        assert stop > settings.shutdown_timeout_seconds, f"chatd-{role}: killed before it can drain"
        assert unit.values("Install", "WantedBy") == ["multi-user.target"]
    assert addresses["api"] != addresses["worker"], "api and worker would fight over one port"
    gateway_ports = {int(d.args[0].rsplit(":", 1)[-1]) for d in nginx.walk() if d.name == "listen"}
    assert not gateway_ports & {port for _, port in addresses.values()}, "nginx on the same host takes that port"


def test_systemd_units_are_hardened() -> None:
    for name, unit in units().items():
        assert unit.value("Service", "NoNewPrivileges") == "yes", name
        assert unit.value("Service", "ProtectSystem") == "strict", name
        assert unit.value("Service", "PrivateTmp") == "yes", name
        dynamic = unit.values("Service", "DynamicUser") == ["yes"]
        assert dynamic or unit.value("Service", "User") not in ("root", "0"), f"{name} runs as root"
        assert unit.values("Service", "CapabilityBoundingSet") == [""], f"{name} keeps capabilities"


def test_systemd_migrate_runs_first_and_finds_the_migrations() -> None:
    found = units()
    migrate = found["chatd-migrate"]
    assert migrate.value("Service", "Type") == "oneshot"
    assert parse_chatd(exec_start(migrate)).command == "migrate"
    assert unit_environment(migrate).get("CHATD_SQL_DIR"), "pip install . leaves sql/ behind"
    for role in ("api", "worker"):
        unit = found[f"chatd-{role}"]
        assert "chatd-migrate.service" in " ".join(unit.values("Unit", "After")).split()
        assert "chatd-migrate.service" in " ".join(unit.values("Unit", "Wants") + unit.values("Unit", "Requires"))
