"""docker-compose.yml, checked against the code it deploys: there is no Docker engine here.

Also the scan of every deploy file for committed secrets.
"""

from __future__ import annotations

import math
import random
import re
import shlex
import string
from collections import Counter
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from chatd.backends.registry import make_backends
from chatd.settings import ROLES, Settings
from tests.deploy.helpers import (
    COMPOSE,
    DATA_IMAGES,
    DOCKERFILE,
    DOCKERIGNORE,
    KNOWN_VARS,
    NGINX_CONF,
    REAL_BACKENDS,
    REQUIRED_ENV,
    SETTING_VARS,
    SYSTEMD,
    URL_SCHEMES,
    chatd_services,
    command,
    data_services,
    depends_on,
    dockerfile_env,
    dockerfile_exposed,
    dockerfile_instructions,
    dockerfile_stages,
    duration_seconds,
    effective_settings,
    environment,
    gateway,
    image_name,
    parse_chatd,
    published_ports,
    resolve,
    serve_settings,
    unit_environment,
    units,
)


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
        elif args.command == "backup":
            assert service.get("profiles"), f"{name}: `docker compose up` would take a backup every time"
        else:
            assert args.command == "migrate", f"{name}: a long-running chatd service must `serve`"


def test_depends_on_targets_exist_and_are_healthy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    image_healthcheck = "HEALTHCHECK" in dockerfile_instructions(final_stage=True)
    for name, service in services.items():
        for target, condition in depends_on(service).items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert condition in ("service_healthy", "service_completed_successfully"), (
                f"{name} -> {target}: started is not ready"
            )
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
            mq_env.get("RABBITMQ_DEFAULT_USER"),
            mq_env.get("RABBITMQ_DEFAULT_PASS"),
        ), "RabbitMQ's default guest user cannot log in from another host"


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
            source, target = (
                (volume["source"], volume["target"]) if isinstance(volume, dict) else str(volume).split(":")[:2]
            )
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
    # No committed default for the token the gateway exposes, nor for any password (issue 22).
    for name in ("CHATD_ADMIN_TOKEN", "MARIADB_PASSWORD", "RABBITMQ_PASSWORD"):
        for missing in ({}, {name: ""}):
            with pytest.raises(KeyError, match=name):
                resolve(raw_compose, {**{k: v for k, v in REQUIRED_ENV.items() if k != name}, **missing})
    defaults = {name: argument for name, operator, argument in seen if operator in (":-", "-") and argument}
    assert not {name for name in defaults if re.search(r"(PASSWORD|PASS|SECRET|TOKEN)$", name)}, defaults
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


def redis_options(service: dict[str, Any]) -> dict[str, str]:
    """``redis-server --name value ...`` as ``{name: value}``."""
    args = command(service)
    assert args[0] == "redis-server", args
    options: dict[str, str] = {}
    for index, arg in enumerate(args):
        if arg.startswith("--"):
            following = args[index + 1] if index + 1 < len(args) else ""
            options[arg[2:]] = "" if following.startswith("--") else following
    return options


def memory_bytes(text: str) -> int:
    """Redis's memory units: ``256mb``, ``1gb``, ``100000`` (bytes)."""
    match = re.fullmatch(r"(\d+)(b|k|kb|m|mb|g|gb)?", text.lower())
    assert match, f"not a Redis memory size: {text!r}"
    unit = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 10**6, "mb": 1024**2, "g": 10**9, "gb": 1024**3}
    return int(match.group(1)) * unit[match.group(2) or ""]


def test_redis_memory_is_bounded_and_evicts_anything(compose: dict[str, Any]) -> None:
    # Redis holds caches, the reconciler's lease and the live fan-out: nothing needed for
    # correctness, so when full it evicts (any key: a key without a TTL must not fail writes).
    (service,) = [s for s in data_services(compose).values() if image_name(s) == "redis"]
    options = redis_options(service)
    assert 0 < memory_bytes(options.get("maxmemory", "0")) <= 4 * 1024**3, "a maxmemory, and a modest one"
    assert options.get("maxmemory-policy") in ("allkeys-lru", "allkeys-lfu"), options.get("maxmemory-policy")


def test_the_operator_can_reserve_creating_applications_and_limit_chats(raw_compose: dict[str, Any]) -> None:
    env = {**REQUIRED_ENV, "CHATD_ADMIN_CREATES_APPLICATIONS": "1", "CHATD_MAX_CHATS_PER_APPLICATION": "500"}
    for name, service in chatd_services(resolve(raw_compose, env)).items():
        settings = Settings.from_env(environment(service))
        assert settings.admin_creates_applications and settings.max_chats_per_application == 500, name
    for name, service in chatd_services(resolve(raw_compose, dict(REQUIRED_ENV))).items():
        settings = Settings.from_env(environment(service))  # unset: chatd's own defaults
        assert not settings.admin_creates_applications and not settings.open_listing, name
        assert settings.max_chats_per_application == Settings().max_chats_per_application, name


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
    files = [COMPOSE, DOCKERFILE, NGINX_CONF, DOCKERIGNORE, *SYSTEMD.glob("*.service"), *SYSTEMD.glob("*.timer")]
    for path in files:
        text = path.read_text()
        assert "PRIVATE KEY" not in text, path
        # "=" only as base64's padding: a Key=value line (IOSchedulingPriority=7) is no token.
        for token in re.findall(r"[A-Za-z0-9+/_-]{20,}={0,2}", text):
            assert not looks_random(token), f"{path.name}: {token!r} looks like a secret"


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """``{target: source}`` for each entry of ``volumes``, short or long syntax."""
    found = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            found[str(volume["target"])] = str(volume.get("source", ""))
        else:
            source, target = str(volume).split(":")[:2]
            found[target] = source
    return found


def image_directory_owner(path: str) -> tuple[str, str]:
    """Who the runtime image's ``install -d -o OWNER ... path`` makes ``path`` belong to, and its mode."""
    for name, arguments in dockerfile_stages()[-1]:
        if name != "RUN":
            continue
        for part in arguments.split("&&"):
            argv = shlex.split(part)
            if argv[:2] == ["install", "-d"] and argv[-1] == path:
                options = dict(zip(argv[2:-1:2], argv[3:-1:2], strict=True))
                return options["-o"], options.get("-m", "")
    pytest.fail(f"deploy/Dockerfile does not make {path} (a new volume starts as the image's directory)")


def test_compose_can_take_a_backup_into_a_volume(raw_compose: dict[str, Any], compose: dict[str, Any]) -> None:
    services = chatd_services(compose)
    backups = {name: s for name, s in services.items() if parse_chatd(command(s)).command == "backup"}
    assert len(backups) == 1, "one service runs `chatd backup` (docker compose run --rm backup)"
    ((name, service),) = backups.items()
    argv = command(service)
    args = parse_chatd(argv)
    assert args.keep and args.keep >= 2, f"{name}: --keep, so old backups do not fill the disk"
    # A one-shot, out of `docker compose up`, under the one configuration every chatd service has.
    assert service.get("profiles") and str(service.get("restart", "no")) == "no"
    assert (service.get("healthcheck") or {}).get("disable"), "the image's /healthz check on a one-shot"
    migrate = next(s for s in services.values() if parse_chatd(command(s)).command == "migrate")
    assert environment(service) == environment(migrate)
    assert raw_compose["services"][name]["environment"] is raw_compose["services"]["migrate"]["environment"]
    # The backups outlive the container: a named volume at the directory chatd writes to.
    directory = str(args.dir)
    source = mounts(service).get(directory)
    assert source in (compose.get("volumes") or {}), f"{name}: {directory} is not on a named volume"
    # A new named volume takes the owner of the image's directory: the image's user must own it.
    (user,) = [arguments for n, arguments in dockerfile_stages()[-1] if n == "USER"]
    uid = user.split(":")[0]
    names = {uid}
    for _, arguments in [(n, a) for n, a in dockerfile_stages()[-1] if n == "RUN"]:
        created = re.search(rf"useradd\b[^&]*--uid {uid}\b[^&]*\s(\S+)\s*(?:&&|$)", arguments)
        if created:
            names.add(created.group(1))
    owner, mode = image_directory_owner(directory)
    assert owner in names, f"{directory} belongs to {owner}, chatd runs as {names}"
    assert mode == "0700", "backups hold every application's token"
