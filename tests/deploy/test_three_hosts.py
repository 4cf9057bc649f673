"""deploy/three-hosts: chatd on chat1, chat2 and chat3, behind nginx balancing over the three api processes.

Installed by its own install.sh into scratch roots, one per host and one for the gateway, then
checked as deploy/systemd and deploy/nginx.conf are: systemd-analyze verify on each host's units
with the drop-ins applied, the environment files through chatd's Settings, the placeholder check
the units run before starting, and the gateway's configuration run by the real nginx in front of
three stand-in api processes on 127.0.0.1 (EchoUpstream, each in a process of its own, so that
killing one closes its connections as a dead api process's are).
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from chatd.backends.redis_backends import parse_sentinel_url
from chatd.backends.registry import make_backends
from chatd.settings import Settings, server_urls
from tests.deploy.helpers import (
    NGINX_CONF,
    REAL_BACKENDS,
    ROOT,
    SETTING_VARS,
    Directive,
    Gateway,
    Unit,
    effective_settings,
    http_block,
    local_nginx_conf,
    local_ports,
    nginx_command,
    nginx_parse,
    parse_unit,
    server_block,
    systemd_analyze_and_stub,
    unit_environment,
)
from tests.deploy.test_nginx import request
from tests.deploy.test_systemd import exec_start, systemd_argv

THREE_HOSTS = ROOT / "deploy" / "three-hosts"
HOSTS = ("chat1", "chat2", "chat3")
PRIMARY, REPLICA = "chat1", "chat2"
# Units on every host, and those on chat1 only (migrations and backups, against the primary).
EVERY_HOST = {"chatd-api.service", "chatd-worker.service"}
CHAT1_ONLY = {"chatd-migrate.service", "chatd-backup.service", "chatd-backup.timer"}
PLACEHOLDER = re.compile(r"CHANGE_ME_[A-Z_]+")
ACCESS_LOG = "/var/log/nginx/chatd-access.log"


# --- installing ----------------------------------------------------------------------------------


def install(destdir: Path, target: str) -> Path:
    result = subprocess.run(
        ["sh", str(THREE_HOSTS / "install.sh"), target],
        env={**os.environ, "DESTDIR": str(destdir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return destdir


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{host or "gateway": the root install.sh installed it under}``."""
    root = tmp_path_factory.mktemp("three-hosts")
    return {target: install(root / target, target) for target in (*HOSTS, "gateway")}


def unit_dir(root: Path) -> Path:
    return root / "etc" / "systemd" / "system"


def with_drop_ins(unit: Unit, folder: Path) -> Unit:
    """``unit`` as systemd loads it from ``folder``: its drop-ins applied, in file-name order.

    Drop-ins come from ``<unit>.d/`` and from the prefix directories of a dashed name
    (``chatd-.service.d/`` for every chatd-*.service). An empty assignment empties the list.
    """
    name = unit.path.name
    prefixes = [f"{name[: i + 1]}{unit.path.suffix}.d" for i, char in enumerate(unit.path.stem) if char == "-"]
    confs = sorted((c for d in [*prefixes, f"{name}.d"] for c in (folder / d).glob("*.conf")), key=lambda c: c.name)
    sections = {section: {key: list(values) for key, values in keys.items()} for section, keys in unit.sections.items()}
    for conf in confs:
        for section, keys in parse_unit(conf).sections.items():
            for key, values in keys.items():
                merged = sections.setdefault(section, {}).setdefault(key, [])
                for value in values:
                    if value:
                        merged.append(value)
                    else:
                        merged.clear()
    return Unit(unit.path, sections, unit.documented_env)


def host_units(root: Path) -> dict[str, Unit]:
    folder = unit_dir(root)
    return {path.stem: with_drop_ins(parse_unit(path), folder) for path in sorted(folder.glob("*.service"))}


# --- environment files ---------------------------------------------------------------------------


def read_env(path: Path) -> dict[str, str]:
    """A systemd EnvironmentFile= whose values need no quoting (asserted): ``KEY=value`` lines."""
    env = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip()[0] in "#;":
            continue
        key, equals, value = line.partition("=")
        assert equals and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{path}:{number}: {line!r}"
        assert not re.search(r"[\s\"'\\$]", value), f"{path}:{number}: a value systemd would unquote or split"
        assert key not in env, f"{path}:{number}: {key} twice"
        env[key] = value
    return env


def host_env(root: Path) -> dict[str, str]:
    return read_env(root / "etc" / "chatd" / "chatd.env")


def filled(env: dict[str, str], keep: str = "") -> dict[str, str]:
    """``env`` with every placeholder but ``keep`` replaced by a value, as an operator does."""
    return {
        key: PLACEHOLDER.sub(lambda m: m.group(0) if m.group(0) == keep else "filled-" + m.group(0)[10:].lower(), value)
        for key, value in env.items()
    }


def hosts_of(url_list: str) -> list[str | None]:
    return [urlsplit(url).hostname for url in server_urls(url_list)]


def test_install_puts_each_file_where_its_host_reads_it(installed: dict[str, Path]) -> None:
    for host in HOSTS:
        root = installed[host]
        units = {path.name for path in unit_dir(root).iterdir() if path.is_file()}
        assert units == (EVERY_HOST | CHAT1_ONLY if host == PRIMARY else EVERY_HOST), host
        for name in units:
            assert (unit_dir(root) / name).read_text() == (ROOT / "deploy" / "systemd" / name).read_text()
        # A drop-in for a unit that is not there (a misspelt name) would be ignored without a word.
        for folder in unit_dir(root).glob("*.d"):
            stem, suffix = folder.name.removesuffix(".d").rsplit(".", 1)
            assert any(unit.startswith(stem) and unit.endswith(f".{suffix}") for unit in units), folder.name
            assert stem.endswith("-") or f"{stem}.{suffix}" in units, folder.name
        env = root / "etc" / "chatd" / "chatd.env"
        assert env.read_text() == (THREE_HOSTS / host / "chatd.env").read_text()
        assert env.stat().st_mode & 0o777 == 0o600 and env.parent.stat().st_mode & 0o777 == 0o700


def test_installing_again_keeps_the_env_file_the_operator_filled_in(tmp_path: Path) -> None:
    env = install(tmp_path, REPLICA) / "etc" / "chatd" / "chatd.env"
    env.write_text("CHATD_ADMIN_TOKEN=filled-in\n")
    install(tmp_path, REPLICA)
    assert env.read_text() == "CHATD_ADMIN_TOKEN=filled-in\n"
    assert env.with_suffix(".env.new").read_text() == (THREE_HOSTS / REPLICA / "chatd.env").read_text()
    assert env.with_suffix(".env.new").stat().st_mode & 0o777 == 0o600


def test_systemd_analyze_verifies_each_host(installed: dict[str, Path], tmp_path: Path) -> None:
    """Each host's units with their drop-ins, chatd's path swapped for a stub; any warning fails."""
    analyze, stub = systemd_analyze_and_stub(tmp_path)

    def verify(folder: Path) -> subprocess.CompletedProcess[str]:
        names = sorted(path.name for path in folder.iterdir() if path.is_file())
        return subprocess.run(
            [analyze, "verify", "--man=no", *names], cwd=folder, capture_output=True, text=True, timeout=60
        )

    for host in HOSTS:
        folder = tmp_path / host
        shutil.copytree(unit_dir(installed[host]), folder)
        for path in folder.rglob("*"):
            if path.is_file():
                path.write_text(path.read_text().replace("/opt/chatd/bin/chatd", str(stub)))
        result = verify(folder)
        assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
        # The drop-ins are read: one made wrong is reported.
        for drop_in in (folder / "chatd-api.service.d" / "host.conf", folder / "chatd-.service.d" / "three-hosts.conf"):
            text = drop_in.read_text()
            drop_in.write_text(text + "NoSuchSetting=1\n")
            assert f"{drop_in}:" in verify(folder).stderr, f"{host}: systemd-analyze did not read {drop_in.name}"
            drop_in.write_text(text)


def test_processes_listen_on_their_host_where_the_gateway_looks(installed: dict[str, Path]) -> None:
    upstreams = upstream_servers()
    api_addresses = set()
    for host in HOSTS:
        env = filled(host_env(installed[host]))
        units = host_units(installed[host])
        base = {path.stem: parse_unit(path) for path in (ROOT / "deploy" / "systemd").glob("chatd-*.service")}
        listening = {}
        for role in ("api", "worker"):
            unit = units[f"chatd-{role}"]
            assert len(unit.values("Service", "ExecStart")) == 1, f"{host} chatd-{role}: the unit's own is replaced"
            argv = exec_start(unit)
            settings = effective_settings({**env, **unit_environment(unit)}, argv)
            assert settings.role == role and settings.host == host, f"{host} chatd-{role}: {argv}"
            listening[role] = (settings.host, settings.port)
            # The drop-in changes where it listens, nothing else of the command.
            base_argv = exec_start(base[f"chatd-{role}"])
            assert [a for a in argv if not a.startswith("--host=")] == [
                a for a in base_argv if not a.startswith("--host=")
            ]
            assert "--host=127.0.0.1" in base_argv
        assert listening["api"] != listening["worker"], f"{host}: api and worker on one port"
        api_addresses.add(f"{host}:{listening['api'][1]}")
        assert f"{host}:{listening['worker'][1]}" not in upstreams, "the gateway would send requests to a worker"
    assert set(upstreams) == api_addresses, f"upstreams {sorted(upstreams)}, api processes {sorted(api_addresses)}"


def test_environment_files_configure_the_cluster(installed: dict[str, Path]) -> None:
    envs = {host: host_env(installed[host]) for host in HOSTS}
    for host, env in envs.items():
        assert set(env) <= SETTING_VARS, f"{host}: not chatd settings: {sorted(set(env) - SETTING_VARS)}"
        settings = Settings.from_env(filled(env))  # validates, as chatd does at start
        assert {backend.name for backend in make_backends(settings).all()} == REAL_BACKENDS
        store, replica = urlsplit(settings.database_url), urlsplit(settings.database_replica_url or "")
        assert (store.scheme, store.hostname, replica.scheme, replica.hostname) == ("mysql", PRIMARY, "mysql", REPLICA)
        assert (store.username, store.path) == (replica.username, replica.path), "the replica of the same database"
        assert parse_sentinel_url(settings.redis_url or "") == ([(h, 26379) for h in HOSTS], "chatd", 0)
        for url_list in (settings.amqp_url or "", settings.elasticsearch_url or ""):
            found = hosts_of(url_list)
            assert found[0] == host and sorted(found, key=str) == list(HOSTS), f"{host}: {url_list}"
        assert {urlsplit(url).scheme for url in server_urls(settings.amqp_url or "")} == {"amqp"}
        assert {urlsplit(url).scheme for url in server_urls(settings.elasticsearch_url or "")} == {"http"}
        assert settings.elasticsearch_replicas == 1
        assert settings.admin_token and not settings.open_listing
    # The same file on every host, but for which broker and node come first.
    lists = {"CHATD_AMQP_URL", "CHATD_ELASTICSEARCH_URL"}

    def unordered(env: dict[str, str]) -> dict[str, Any]:
        return {key: sorted(server_urls(value)) if key in lists else value for key, value in env.items()}

    assert unordered(envs["chat1"]) == unordered(envs["chat2"]) == unordered(envs["chat3"])


def test_environment_files_hold_no_secret(installed: dict[str, Path]) -> None:
    for host in HOSTS:
        env = host_env(installed[host])
        assert PLACEHOLDER.fullmatch(env["CHATD_ADMIN_TOKEN"]), f"{host}: an admin token in the repository"
        for key, value in env.items():
            for url in server_urls(value) if "://" in value else []:
                password = urlsplit(url).password
                assert password is None or PLACEHOLDER.fullmatch(password), f"{host} {key}: a password"
            rest = PLACEHOLDER.sub("", value)
            assert not re.search(r"[0-9a-fA-F]{16,}|[A-Za-z0-9+/=_-]{32,}", rest), f"{host} {key}: a secret?"


def test_units_refuse_to_start_while_a_placeholder_is_left(installed: dict[str, Path]) -> None:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # what systemd gives: the env file and PATH

    def run(unit: Unit, env: dict[str, str]) -> list[subprocess.CompletedProcess[str]]:
        # "+" commands run as root outside the sandbox (the backup's directory hand-over): not here.
        checks = [c for c in unit.values("Service", "ExecStartPre") if not c.startswith("+")]
        environment = {**base, **env, **unit_environment(unit)}
        return [
            subprocess.run(systemd_argv(c), env=environment, capture_output=True, text=True, timeout=10) for c in checks
        ]

    for host in HOSTS:
        env = host_env(installed[host])
        with_placeholders = sorted(key for key, value in env.items() if PLACEHOLDER.search(value))
        assert "CHATD_ADMIN_TOKEN" in with_placeholders and "CHATD_DATABASE_URL" in with_placeholders
        for name, unit in host_units(installed[host]).items():
            checks = unit.values("Service", "ExecStartPre")
            assert not any(check.startswith("-") for check in checks), f"{name}: a failing check must stop the start"
            failed = [result for result in run(unit, env) if result.returncode != 0]
            assert failed, f"{host} {name} would start with the repository's placeholders"
            assert set(with_placeholders) <= set(failed[0].stderr.split()), failed[0].stderr
            placeholders = [value for value in env.values() if PLACEHOLDER.search(value)]
            assert not any(value in failed[0].stderr for value in placeholders), "the journal gets names, not values"
            # One left: refused, naming it alone; none left: every check passes.
            (only,) = [r for r in run(unit, filled(env, keep="CHANGE_ME_AMQP_PASSWORD")) if r.returncode != 0]
            assert [word for word in only.stderr.split() if word.startswith("CHATD_")] == ["CHATD_AMQP_URL"]
            assert all(result.returncode == 0 for result in run(unit, filled(env))), f"{host} {name}"


# --- the gateway ---------------------------------------------------------------------------------


def gateway_conf(text: str) -> str:
    result = subprocess.run(
        ["sh", str(THREE_HOSTS / "gateway-conf.sh")], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def shape(directive: Directive) -> Any:
    """A directive without its line numbers, to compare configurations."""
    block = None if directive.block is None else [shape(child) for child in directive.block]
    return directive.name, directive.args, block


def upstream_block() -> Directive:
    (upstream,) = nginx_parse((THREE_HOSTS / "nginx-upstreams.conf").read_text()).find("upstream")
    return upstream


def upstream_servers() -> dict[str, list[str]]:
    """``{"chat1:8081": [its parameters], ...}`` of nginx-upstreams.conf."""
    return {server.args[0]: server.args[1:] for server in upstream_block().find("server")}


def test_gateway_is_deploy_nginx_conf_with_the_three_upstreams_included(installed: dict[str, Path]) -> None:
    nginx = installed["gateway"] / "etc" / "nginx"
    text = (nginx / "nginx.conf").read_text()
    assert text == gateway_conf(NGINX_CONF.read_text())
    assert (nginx / "nginx-upstreams.conf").read_text() == (THREE_HOSTS / "nginx-upstreams.conf").read_text()
    # deploy/nginx.conf, but for its upstream block (an include in its place) and where it logs.
    original, gateway = nginx_parse(NGINX_CONF.read_text()), nginx_parse(text)
    (upstream,) = http_block(original).find("upstream")
    (include,) = http_block(gateway).find("include")
    assert include.args == ["nginx-upstreams.conf"] and not http_block(gateway).find("upstream")
    assert http_block(gateway).block.index(include) == http_block(original).block.index(upstream)  # type: ignore[union-attr]
    logs = {"/dev/stdout": ACCESS_LOG, "/dev/stderr": "stderr"}
    for directive in original.walk():
        if directive.name in ("access_log", "error_log"):
            directive.args = [logs.get(arg, arg) for arg in directive.args]
    http_block(original).block[http_block(original).block.index(upstream)] = include  # type: ignore[index,union-attr]
    assert shape(gateway) == shape(original)
    # The included upstream is the one every location proxies to, with passive health checks.
    block = upstream_block()
    proxied = {d.args[0] for d in server_block(gateway).walk() if d.name == "proxy_pass"}
    assert proxied == {f"http://{block.args[0]}"}
    assert block.find("least_conn") and block.find("keepalive") and block.find("zone")
    assert [host.split(":")[0] for host in upstream_servers()] == list(HOSTS)
    for address, parameters in upstream_servers().items():
        assert {p.split("=")[0] for p in parameters} == {"max_fails", "fail_timeout"}, address
    # Without the block it replaces, the script writes nothing and fails.
    broken = subprocess.run(
        ["sh", str(THREE_HOSTS / "gateway-conf.sh")],
        input=NGINX_CONF.read_text().replace("upstream chatd_api", "upstream other"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert broken.returncode != 0 and broken.stdout == "" and "upstream" in broken.stderr


def local_gateway_conf(conf: Path, ports: dict[str, int]) -> None:
    """Turn the localized deploy/nginx.conf at ``conf`` into the three-host gateway's, on local ports.

    nginx-upstreams.conf goes beside it with chat1..chat3 replaced by 127.0.0.1 and ``ports``;
    the access log goes to ``access.log`` there.
    """
    text = gateway_conf(conf.read_text())
    assert text.count(ACCESS_LOG) == 1
    conf.write_text(text.replace(ACCESS_LOG, str(conf.parent / "access.log")))
    upstreams = (THREE_HOSTS / "nginx-upstreams.conf").read_text()
    for host, port in ports.items():
        upstreams, count = re.subn(rf"\bserver\s+{host}:\d+", f"server 127.0.0.1:{port}", upstreams)
        assert count == 1, host
    (conf.parent / "nginx-upstreams.conf").write_text(upstreams)


def test_gateway_starts_where_systemd_gives_it_sockets(tmp_path: Path) -> None:
    """Under systemd nginx's standard output and error are sockets to the journal: nginx -t passes."""
    conf = local_nginx_conf(tmp_path, local_ports(), 1)
    local_gateway_conf(conf, {host: n for n, host in enumerate(HOSTS, 1)})
    journal, ours = socket.socketpair()
    with journal, ours:
        result = subprocess.run([*nginx_command(conf), "-t"], stdout=journal, stderr=journal, timeout=30)
        journal.shutdown(socket.SHUT_WR)
        said = ours.makefile("rb").read().decode()
    assert result.returncode == 0, said


# A stand-in api process: EchoUpstream (answers every request with the headers it got) on a port of
# its own, printed on its first line. "hang-up": it takes each request and closes the connection
# without an answer, as a process dying under a request does.
FAKE_API = """
import sys, threading
from tests.deploy.test_nginx import EchoUpstream
upstream = EchoUpstream()
port = upstream.start()
if sys.argv[1] == "hang-up":
    upstream.stopped.set()
print(port, flush=True)
threading.Event().wait()
"""


class FakeApi:
    def __init__(self, mode: str = "answer"):
        self.process = subprocess.Popen(
            [sys.executable, "-c", FAKE_API, mode], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        self.port = 0

    def wait_listening(self, deadline: float) -> None:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = self.process.stdout.readline() if ready else ""
        assert line.strip().isdigit(), f"the stand-in api did not start (exit {self.process.poll()})"
        self.port = int(line)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@contextmanager
def three_apis(*modes: str) -> Iterator[list[FakeApi]]:
    apis = [FakeApi(mode) for mode in modes]
    try:
        deadline = time.monotonic() + 30
        for api in apis:
            api.wait_listening(deadline)
        yield apis
    finally:
        for api in apis:
            api.kill()


@contextmanager
def three_host_gateway(folder: Path, apis: list[FakeApi]) -> Iterator[Gateway]:
    gateway = Gateway(folder, apis[0].port)
    local_gateway_conf(gateway.conf, {host: api.port for host, api in zip(HOSTS, apis)})
    with gateway:
        yield gateway


class Client:
    """Requests to the gateway, each with its own X-Request-Id, and what the access log says of them."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.sent: dict[str, tuple[str, int, dict[str, str], bytes]] = {}

    def send(self, method: str, label: str) -> tuple[str, int, bytes]:
        request_id = f"{label}-{len(self.sent)}"
        body = b'{"content": "hello"}' if method == "POST" else None
        headers = {"X-Request-Id": request_id, "Content-Type": "application/json"}
        status, response_headers, answer = request(
            self.gateway, method, "/applications/tok/chats/1/messages", body=body, headers=headers
        )
        self.sent[request_id] = (method, status, response_headers, answer)
        return request_id, status, answer

    def tried(self, request_id: str, timeout: float = 15.0) -> list[str]:
        """The api processes nginx tried for the request, in order (its access log's upstream)."""
        deadline = time.monotonic() + timeout
        log = self.gateway.folder / "access.log"
        while True:
            for line in log.read_text().splitlines() if log.exists() else []:
                record = json.loads(line)
                if record["request_id"] == request_id:
                    return [address.strip() for address in record["upstream"].split(",")]
            assert time.monotonic() < deadline, f"{request_id} is not in the access log"
            time.sleep(0.05)


def assert_bad_gateway(client: Client, request_id: str) -> None:
    method, status, headers, body = client.sent[request_id]
    assert status == 502 and json.loads(body)["error"]["code"] == "bad_gateway", (method, status, body)
    assert headers["retry-after"] == "1" and headers["x-request-id"] == request_id


def test_gateway_spreads_over_the_three_and_outlives_losing_one(tmp_path: Path) -> None:
    with three_apis("answer", "answer", "answer") as apis, three_host_gateway(tmp_path, apis) as gateway:
        client = Client(gateway)
        addresses = {api.address for api in apis}
        spread = [client.send("GET", "spread") for _ in range(12)]
        assert [status for _, status, _ in spread] == [200] * 12
        served = Counter(client.tried(request_id)[-1] for request_id, _, _ in spread)
        assert set(served) == addresses and max(served.values()) <= 6, served
        # One process dies (its connections with it): reads and creations go to the other two;
        # a request that found the dead one refusing connections went on to another.
        lost, *alive = apis
        lost.kill()
        answers = [client.send(method, "one-lost") for _ in range(10) for method in ("GET", "POST")]
        assert [status for _, status, _ in answers] == [200] * 20
        tried = [client.tried(request_id) for request_id, _, _ in answers]
        assert {attempts[-1] for attempts in tried} == {api.address for api in alive}
        assert all(set(attempts[:-1]) <= {lost.address} for attempts in tried), tried
        assert any(lost.address in attempts for attempts in tried), "nginx never tried the dead process"
        # None left: nginx's own JSON 502, for reads and creations alike.
        for api in alive:
            api.kill()
        for method in ("GET", "POST"):
            request_id, _, _ = client.send(method, "none-left")
            assert_bad_gateway(client, request_id)


def test_a_creation_that_reached_a_failing_process_is_not_sent_to_another(tmp_path: Path) -> None:
    """Retried, a POST could create twice (without an Idempotency-Key): 502, the client decides."""
    with three_apis("answer", "hang-up", "answer") as apis, three_host_gateway(tmp_path, apis) as gateway:
        client = Client(gateway)
        failing = apis[1].address
        # Round robin reaches the failing process within three requests (two failures take it
        # out of none: max_fails is 3). A POST it took is answered 502 and sent nowhere else.
        for _ in range(6):
            request_id, status, _ = client.send("POST", "create")
            attempts = client.tried(request_id)
            assert len(attempts) == 1, f"a POST went to {attempts}"
            if attempts == [failing]:
                assert_bad_gateway(client, request_id)
                break
            assert status == 200
        else:
            pytest.fail("no POST reached the failing process")
        # A GET it took goes on to another process and is answered.
        for _ in range(6):
            request_id, status, _ = client.send("GET", "read")
            attempts = client.tried(request_id)
            assert status == 200 and attempts[-1] != failing, attempts
            if attempts[0] == failing:
                assert len(attempts) == 2
                break
            assert len(attempts) == 1
        else:
            pytest.fail("no GET reached the failing process")
