"""deploy/systemd: the units run the chatd commands the code accepts, hardened; the backup and its timer."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import stat
import subprocess
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath

import yaml

from chatd.backends.registry import make_backends
from tests.deploy.helpers import (
    ROOT,
    SYSTEMD,
    Directive,
    Unit,
    duration_seconds,
    effective_settings,
    parse_chatd,
    parse_unit,
    systemd_analyze_and_stub,
    unit_environment,
    units,
)

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"


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


# --- chatd-backup.service and chatd-backup.timer -------------------------------------------------

BACKUP_USER = "chatd"


def timers() -> dict[str, Unit]:
    return {path.stem: parse_unit(path) for path in sorted(SYSTEMD.glob("*.timer"))}


def backup_argv() -> list[str]:
    return exec_start(units()["chatd-backup"])


def backup_paths() -> tuple[PurePosixPath, PurePosixPath]:
    """The backup directory and the metrics file of chatd-backup.service's ExecStart."""
    argv = backup_argv()
    assert len(argv) % 2 == 1 and argv[1] == "backup" and not argv[2].startswith("-"), argv
    options = dict(zip(argv[3::2], argv[4::2], strict=True))
    return PurePosixPath(argv[2]), PurePosixPath(options["--metrics-file"])


def writable_paths(unit: Unit) -> dict[PurePosixPath, str]:
    """What ProtectSystem=strict leaves writable, inside the unit's namespace, and why."""
    found: dict[PurePosixPath, str] = {}
    roots = {"StateDirectory": "/var/lib", "RuntimeDirectory": "/run", "CacheDirectory": "/var/cache"}
    roots["LogsDirectory"] = "/var/log"
    for key, root in roots.items():
        for value in unit.values("Service", key):
            for name in value.split():
                found[PurePosixPath(root, name.split(":")[0])] = key
    for value in unit.values("Service", "ReadWritePaths"):
        for path in value.split():
            found[PurePosixPath(path.lstrip("-+"))] = "ReadWritePaths"
    for value in unit.values("Service", "BindPaths"):
        for entry in value.split():
            source, _, rest = entry.lstrip("-").partition(":")
            target = PurePosixPath(rest.split(":")[0] or source)
            assert any(PurePosixPath(source).is_relative_to(p) for p in found), f"BindPaths from read-only {source}"
            found[target] = f"BindPaths from {source}"
    return found


def writable(unit: Unit, path: PurePosixPath) -> bool:
    return any(path.is_relative_to(root) for root in writable_paths(unit))


def test_systemd_analyze_verifies_every_unit(tmp_path: Path) -> None:
    """`systemd-analyze verify` on every unit, chatd's path swapped for a stub; any warning fails."""
    analyze, stub = systemd_analyze_and_stub(tmp_path)
    files = sorted([*SYSTEMD.glob("*.service"), *SYSTEMD.glob("*.timer")])
    assert {path.name for path in files} >= {"chatd-api.service", "chatd-backup.service", "chatd-backup.timer"}
    for path in files:
        text = path.read_text()
        (tmp_path / path.name).write_text(text.replace("/opt/chatd/bin/chatd", str(stub)))
    result = subprocess.run(
        [analyze, "verify", "--man=no", *(path.name for path in files)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), (
        result.stdout + result.stderr
    )


def test_systemd_backup_timer_starts_the_backup_daily() -> None:
    (timer,) = timers().values()
    service = timer.values("Timer", "Unit") or [timer.path.stem + ".service"]
    assert service == ["chatd-backup.service"] and (SYSTEMD / service[0]).is_file()
    assert timer.value("Timer", "Persistent") in ("true", "yes"), "a run missed while the host was off is lost"
    assert duration_seconds(timer.value("Timer", "RandomizedDelaySec")) > 0
    assert timer.values("Install", "WantedBy") == ["timers.target"]
    assert not units()["chatd-backup"].values("Install", "WantedBy"), "started by its timer, not at every boot"
    # When the timer elapses, as systemd computes it: once a day, every day.
    result = subprocess.run(
        ["systemd-analyze", "calendar", "--iterations=4", *timer.values("Timer", "OnCalendar")],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "TZ": "UTC", "LC_ALL": "C"},
    )
    assert result.returncode == 0, result.stderr
    elapses = [
        datetime.strptime(line.split(":", 1)[1].strip(), "%a %Y-%m-%d %H:%M:%S %Z")
        for line in result.stdout.splitlines()
        if re.match(r"\s*(Next elapse|Iter\. #\d+):", line)
    ]
    assert len(elapses) == 4, result.stdout
    assert {later - earlier for earlier, later in itertools.pairwise(elapses)} == {timedelta(days=1)}, elapses


def test_systemd_backup_runs_chatd_backup_like_the_other_units() -> None:
    found = units()
    backup, api = found["chatd-backup"], found["chatd-api"]
    assert backup.value("Service", "Type") == "oneshot"
    argv = backup_argv()
    assert parse_chatd(argv).command == "backup"
    directory, metrics = backup_paths()
    options = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert set(options) == {"--keep", "--metrics-file"}, argv
    assert int(options["--keep"]) >= 2, "--keep: older backups are deleted, but not the only one"
    assert directory.is_absolute() and metrics.is_absolute() and metrics.suffix == ".prom"
    # The same configuration and the same user as the api and worker: the embedded store in their
    # state directory is readable by that user alone.
    for section, key in [
        ("Service", "EnvironmentFile"),
        ("Service", "DynamicUser"),
        ("Service", "User"),
        ("Service", "Group"),
        ("Service", "StateDirectory"),
        ("Service", "WorkingDirectory"),
    ]:
        assert backup.values(section, key) == api.values(section, key), key
    assert unit_environment(backup) == unit_environment(api)
    assert duration_seconds(backup.value("Service", "TimeoutStartSec")) <= 6 * 3600, "a stuck backup is stopped"
    assert int(backup.value("Service", "Nice")) > 0
    io_class = backup.value("Service", "IOSchedulingClass")
    assert io_class == "idle" or (io_class == "best-effort" and backup.value("Service", "IOSchedulingPriority") == "7")


def test_systemd_backup_writes_only_where_its_sandbox_lets_it() -> None:
    backup = units()["chatd-backup"]
    directory, metrics = backup_paths()
    assert backup.value("Service", "ProtectSystem") == "strict"
    assert writable(backup, directory), f"{directory} is read-only under ProtectSystem=strict"
    assert writable(backup, metrics.parent), f"{metrics.parent}: the metrics file is written beside it, then renamed"
    store = PurePosixPath(backup.value("Service", "WorkingDirectory"))
    assert writable_paths(backup).get(store) == "StateDirectory", "the embedded store, its -shm file written to read"
    # The textfile collector's directory is shared with other collectors and root's: chatd writes
    # into its own runtime directory mounted there, and root publishes the file after a success.
    assert writable_paths(backup)[metrics.parent].startswith("BindPaths from /run/"), writable_paths(backup)


def backup_scripts(tmp_path: Path, chatd_owner: str, root_owner: str) -> tuple[list[str], list[str], dict[str, Path]]:
    """chatd-backup.service's ExecStartPre and ExecStopPost as argv, with its paths moved under tmp_path."""
    unit = units()["chatd-backup"]
    directory, metrics = backup_paths()
    staging = next(PurePosixPath(e.split(":")[0]) for v in unit.values("Service", "BindPaths") for e in v.split())
    places = {"backups": directory, "textfile": metrics.parent, "staging": staging}
    local = {name: tmp_path / name for name in places}
    (pre,) = unit.values("Service", "ExecStartPre")
    (post,) = unit.values("Service", "ExecStopPost")
    assert pre.startswith("+") and post.startswith("+"), "the hand-over needs root, outside the sandbox"
    commands = []
    for line in (pre, post):
        for name, path in places.items():
            line = line.replace(str(path), str(local[name]))
        assert f"{BACKUP_USER}:{BACKUP_USER}" in line or "root:root" in line
        line = line.replace(f"{BACKUP_USER}:{BACKUP_USER}", chatd_owner).replace("root:root", root_owner)
        assert not any(str(path) in line for path in places.values())
        commands.append(systemd_argv(line))
    return commands[0], commands[1], local


def owner(path: Path) -> str:
    info = path.lstat()
    return f"{info.st_uid}:{info.st_gid}"


def test_systemd_backup_lends_its_directory_and_publishes_the_metric_after_success(tmp_path: Path) -> None:
    """The unit's own root steps, run on scratch paths: the directory lent to chatd for the run and
    taken back, the metric published 0644 after a success only, a planted link never followed.

    Run as root, the owners are real ones (65534 stands for chatd's dynamic UID); otherwise both
    owners are the current user's and only the rest is checked.
    """
    me = f"{os.getuid()}:{os.getgid()}"
    as_root = os.geteuid() == 0
    chatd_owner, root_owner = ("65534:65534", "0:0") if as_root else (me, me)
    pre, post, local = backup_scripts(tmp_path, chatd_owner, root_owner)
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}

    def run(argv: list[str], **env: str) -> None:
        result = subprocess.run(argv, env={**base, **env}, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr

    secret = tmp_path / "secret"
    secret.write_text("not for node_exporter\n")
    secret.chmod(0o600)
    run(pre)
    assert stat.S_IMODE(local["backups"].stat().st_mode) == 0o700 and owner(local["backups"]) == chatd_owner
    assert local["textfile"].is_dir()
    # A night's run: a backup, a link left in the directory, a metrics file in the staging place.
    (local["backups"] / "chatd-backup-20261206T023000Z").mkdir()
    (local["backups"] / "chatd-backup-20261206T023000Z" / "manifest.json").write_text("{}")
    (local["backups"] / "planted").symlink_to(secret)
    local["staging"].mkdir()
    (local["staging"] / "chatd_backup.prom").write_text("chatd_backup_last_success_timestamp_seconds 1.0\n")
    (local["staging"] / "chatd_backup.prom").chmod(0o600)
    run(post, SERVICE_RESULT="success")
    published = local["textfile"] / "chatd_backup.prom"
    assert published.read_text() == "chatd_backup_last_success_timestamp_seconds 1.0\n"
    assert stat.S_IMODE(published.stat().st_mode) == 0o644, "node_exporter runs as a user of its own"
    assert sorted(p.name for p in local["textfile"].iterdir()) == ["chatd_backup.prom"], "no temporary left"
    assert {owner(p) for p in [local["backups"], *local["backups"].rglob("*")]} == {root_owner}
    # The next run lends it again, all of it (the link itself, not what it points at); then
    # fails: the published file stays as it was.
    run(pre)
    assert {owner(p) for p in [local["backups"], *local["backups"].rglob("*")]} == {chatd_owner}
    assert owner(secret) == me, "chown followed the planted link"
    (local["staging"] / "chatd_backup.prom").write_text("chatd_backup_last_success_timestamp_seconds 2.0\n")
    run(post, SERVICE_RESULT="exit-code")
    assert published.read_text().endswith(" 1.0\n")
    assert owner(local["backups"]) == root_owner
    # A link in the staging place is never published (it would copy what root can read).
    (local["staging"] / "chatd_backup.prom").unlink()
    (local["staging"] / "chatd_backup.prom").symlink_to(secret)
    run(post, SERVICE_RESULT="success")
    assert published.read_text().endswith(" 1.0\n")
    # No metrics file at all (a failure before chatd wrote one): nothing to publish, no error.
    (local["staging"] / "chatd_backup.prom").unlink()
    run(post, SERVICE_RESULT="success")
    assert published.read_text().endswith(" 1.0\n")


def test_systemd_backup_alert_waits_longer_than_a_healthy_run_is_late() -> None:
    """A daily backup that ends within its timeout never fires ChatdBackupTooOld."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    (rule,) = [rule for group in groups for rule in group["rules"] if rule.get("alert") == "ChatdBackupTooOld"]
    threshold = re.fullmatch(r"time\(\) - chatd_backup_last_success_timestamp_seconds > (\d+)", rule["expr"].strip())
    assert threshold, rule["expr"]
    (timer,) = timers().values()
    late = duration_seconds(timer.value("Timer", "RandomizedDelaySec")) + duration_seconds(
        units()["chatd-backup"].value("Service", "TimeoutStartSec")
    )
    # The gauge is the snapshot's time; the next one is published up to `late` after 24 h.
    assert 86400 + late < int(threshold.group(1)) + duration_seconds(rule["for"]), (late, rule["for"])
    assert int(threshold.group(1)) + duration_seconds(rule["for"]) <= 2 * 86400, "one missed night must alert"
