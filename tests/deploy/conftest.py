"""Fixtures for the deploy tests: the compose file (raw and resolved) and the parsed nginx.conf."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy.helpers import COMPOSE, NGINX_CONF, REQUIRED_ENV, Directive, nginx_parse, resolve


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any]) -> dict[str, Any]:
    resolved: dict[str, Any] = resolve(raw_compose, dict(REQUIRED_ENV))
    return resolved


@pytest.fixture(scope="module")
def nginx() -> Directive:
    return nginx_parse(NGINX_CONF.read_text())
