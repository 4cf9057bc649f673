"""deploy/Dockerfile and .dockerignore, read as data: there is no Docker engine here."""

from __future__ import annotations

import json
import re
import shlex

from chatd.settings import Settings
from tests.deploy.helpers import (
    DOCKERIGNORE,
    ROOT,
    dockerfile_env,
    dockerfile_exposed,
    dockerfile_stages,
    effective_settings,
    final,
    parse_chatd,
)


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
        regex = "".join(
            ".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?" else re.escape(part)
            for part in re.split(r"(\*\*|\*|\?)", pattern)
        )
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
    needed = [
        "setup.cfg",
        "pyproject.toml",
        "chatd/__init__.py",
        "chatd/backends/registry.py",
        *[str(p.relative_to(ROOT)) for p in (ROOT / "sql").rglob("*.sql")],
    ]
    for path in needed:
        assert not docker_ignores(path), f"{path} is left out of the build context"
    for path in [
        ".venv/bin/python",
        ".git/HEAD",
        ".env",
        "chatd.db",
        "tests/conftest.py",
        "chatd/__pycache__/cli.cpython-311.pyc",
        "chatd.egg-info/PKG-INFO",
    ]:
        assert docker_ignores(path), f"{path} would be sent to the image build"


def shell_commands(arguments: str) -> list[list[str]]:
    """A RUN's ``a && b && c`` as argv's, leading ``VAR=value`` assignments dropped."""
    commands = []
    for part in arguments.split("&&"):
        words = shlex.split(part)
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words.pop(0)
        commands.append(words)
    return commands


def test_dockerfile_installs_the_mariadb_client_for_backup_and_restore() -> None:
    """`chatd backup` runs mariadb-dump and `chatd restore` mariadb on the real set, in this image."""
    stage = dockerfile_stages()[-1]
    user_at = next(index for index, (name, _) in enumerate(stage) if name == "USER")
    runs = [(index, shell_commands(a)) for index, (name, a) in enumerate(stage) if name == "RUN"]
    found = [
        (index, commands, position)
        for index, commands in runs
        for position, argv in enumerate(commands)
        if argv[:2] == ["apt-get", "install"] and "mariadb-client" in argv
    ]
    assert len(found) == 1, "the runtime stage installs Debian's mariadb-client once"
    ((index, commands, position),) = found
    assert index < user_at, "apt-get runs as root, before USER"
    install = commands[position]
    assert "--no-install-recommends" in install and ("-y" in install or "--yes" in install), install
    assert [c for c in commands[:position] if c[:2] == ["apt-get", "update"]], "install from fresh lists"
    assert ["rm", "-rf", "/var/lib/apt/lists/*"] in commands[position + 1 :], "the apt lists stay in the layer"
    # Every apt-get install of the image cleans up in its own layer.
    for _, run in runs:
        if any(c[:2] == ["apt-get", "install"] for c in run):
            assert ["rm", "-rf", "/var/lib/apt/lists/*"] in run
