"""`pip install .` as a user on Debian 12 runs it: a fresh venv, the pip ensurepip put there, no upgrade.

Debian 12's python3-venv seeds venvs with pip 23.0.1 (/usr/share/python-wheels); the python3 first on
PATH may be another interpreter (pyenv's 3.11.7 bundles pip 23.2.1). Both resolvers backtracked from
the old loose OpenTelemetry bounds, and 23.2.1's gave up on aiohttp-server 0.47b0.dev0, which pins an
opentelemetry-instrumentation never published (issue 18). Each distinct interpreter makes a venv here,
its pip is not upgraded, and the install reaches PyPI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

from tests.deploy.helpers import ROOT

# Creating the venv, the install (resolution, downloads, the chatd wheel's build) and the checks.
pytestmark = pytest.mark.timeout(600)

DEBIAN_PYTHON = "/usr/bin/python3"
PIP_MAJOR = 23
INSTALL_TIMEOUT = 300
# Left out of the copy that is installed: what the build never reads and what it would reuse.
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", ".services", "__pycache__", ".*_cache", ".hypothesis", "test-artifacts", "bench-results",
    "build", "dist", "*.egg-info", "*.db", "*.db-*",
)  # fmt: skip
# What an in-tree build leaves behind; none may appear in the checkout.
BUILD_LEFTOVERS = ("build", "dist", "*.egg-info")


@cache
def interpreter(command: str) -> str | None:
    """The real executable behind ``command`` (through a pyenv shim, say), None if there is none."""
    try:
        result = subprocess.run(
            [command, "-c", "import os, sys; print(os.path.realpath(sys.executable))"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def pythons() -> list[pytest.ParameterSet]:
    params = [pytest.param(DEBIAN_PYTHON, id="debian")]
    on_path = shutil.which("python3")
    if on_path and interpreter(on_path) not in (None, interpreter(DEBIAN_PYTHON)):
        params.append(pytest.param(on_path, id="path"))
    return params


def leftovers() -> set[Path]:
    return {path for pattern in BUILD_LEFTOVERS for path in ROOT.glob(pattern)}


def environment(cache_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PIP_USER")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_CACHE_DIR=str(cache_dir), PIP_NO_INPUT="1")
    return env


def run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pip_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One pip cache for the module: the second interpreter's install downloads nothing again."""
    return tmp_path_factory.mktemp("pip-cache")


@pytest.mark.parametrize("python", pythons())
def test_pip_install_of_the_checkout_works_with_debians_pip(python: str, tmp_path: Path, pip_cache: Path) -> None:
    assert interpreter(python), f"no {python}: this test installs chatd with Debian 12's python3 and its pip"
    env = environment(pip_cache)
    before = leftovers()
    # pip builds a local directory in place (build/, chatd.egg-info): it builds a copy, not the checkout.
    source = tmp_path / "chatd"
    shutil.copytree(ROOT, source, ignore=NOT_COPIED)
    venv = tmp_path / "venv"
    created = run([python, "-m", "venv", str(venv)], env, tmp_path, 120)
    assert created.returncode == 0, f"{python} -m venv failed (is python3-venv installed?):\n{created.stderr}"
    pip = [str(venv / "bin" / "python"), "-m", "pip"]

    version = run([*pip, "--version"], env, tmp_path, 60)
    assert version.returncode == 0, version.stderr
    found = version.stdout.split()[1]
    assert int(found.split(".")[0]) == PIP_MAJOR, (
        f"{python} seeds venvs with pip {found}, not the pip {PIP_MAJOR} Debian 12 ships: "
        "this test would not check what it says"
    )

    # --no-compile: pip only warns when byte-compiling fails, and it takes seconds; the rest is what users run.
    installed = run([*pip, "install", "--no-compile", str(source)], env, tmp_path, INSTALL_TIMEOUT)
    assert installed.returncode == 0, (
        f"pip {found}: pip install . failed:\n{installed.stdout[-4000:]}{installed.stderr}"
    )
    assert leftovers() == before, "the install wrote build artefacts into the checkout"

    helped = run([str(venv / "bin" / "chatd"), "--help"], env, tmp_path, 60)
    assert helped.returncode == 0 and "usage: chatd" in helped.stdout, helped.stderr
    checked = run([*pip, "check"], env, tmp_path, 60)
    assert checked.returncode == 0, f"pip {found}: pip check:\n{checked.stdout}{checked.stderr}"
