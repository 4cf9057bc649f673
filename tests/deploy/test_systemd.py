"""deploy/systemd/*.service: the units run the chatd commands the code accepts, hardened."""

from __future__ import annotations

import os
import shlex
import subprocess

from chatd.backends.registry import make_backends
from tests.deploy.helpers import (
    Directive,
    Unit,
    duration_seconds,
    effective_settings,
    parse_chatd,
    unit_environment,
    units,
)


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


def systemd_argv(line: str) -> list[str]:
    """An Exec line as the argv systemd runs: prefixes dropped, ``$$`` and ``%%`` unescaped.

    The unit uses no ``${VAR}`` of systemd's own and no specifiers, so nothing else is expanded.
    """
    text = line.lstrip("-@+!:")
    assert "%" not in text.replace("%%", ""), "a specifier this test does not expand"
    assert "${" not in text.replace("$$", ""), "a variable systemd would expand itself"
    return [word.replace("$$", "$").replace("%%", "%") for word in shlex.split(text)]


def test_systemd_api_refuses_to_start_without_an_admin_token() -> None:
    """nginx forwards /applications to the api from 127.0.0.1: production runs with an admin token."""
    unit = units()["chatd-api"]
    checks = unit.values("Service", "ExecStartPre")
    assert checks, "chatd-api.service has no ExecStartPre that checks CHATD_ADMIN_TOKEN"
    assert not any(check.startswith("-") for check in checks), "a failing check must stop the start"
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # what systemd gives: the env file and PATH

    def run(env: dict[str, str]) -> list[subprocess.CompletedProcess[str]]:
        return [subprocess.run(systemd_argv(c), env=env, capture_output=True, text=True, timeout=10) for c in checks]

    for env in (base, {**base, "CHATD_ADMIN_TOKEN": ""}, {**base, "CHATD_OPEN_LISTING": "1"}):
        results = run(env)
        failed = [result for result in results if result.returncode != 0]
        assert failed, f"chatd-api would start with {sorted(env)}"
        assert "CHATD_ADMIN_TOKEN" in failed[0].stderr, "the journal says what is missing"
    assert all(result.returncode == 0 for result in run({**base, "CHATD_ADMIN_TOKEN": "0123abcd"}))
    documented = {**unit.documented_env, **unit_environment(unit)}
    assert documented.get("CHATD_ADMIN_TOKEN"), "the env file example sets the admin token"
    for unit_name, each in units().items():
        env = {**each.documented_env, **unit_environment(each)}
        assert "CHATD_OPEN_LISTING" not in env, f"{unit_name}: the development switch in production"
