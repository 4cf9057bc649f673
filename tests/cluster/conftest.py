"""The cluster suite (`make test-cluster`): chatd on the local cluster of `services.sh cluster up`.

`make test-cluster` points the test namespaces at the cluster (``CHATD_TEST_*_URL`` from
``services.sh cluster test-env``); run any other way, these tests would kill nodes of a cluster
that chatd does not use, so they refuse to run. One line per node loss is printed at the end:
the fault suite's verdict and the window in which requests were refused or not answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import MYSQL_URL
from tests.faults.verify import Verdict

CLUSTER_MYSQL_PORT = 3316


@dataclass
class NodeLoss:
    name: str
    survived: bool
    verdict: Verdict
    # Seconds from the first request that did not get a 201 to the last (503s, refused connections).
    refused_window: float
    # Searches made during the run that did not answer 200.
    failed_searches: int
    searches: int


LOSSES: list[NodeLoss] = []


@pytest.fixture(autouse=True)
def on_the_cluster() -> None:
    assert f":{CLUSTER_MYSQL_PORT}" in MYSQL_URL, (
        "the cluster suite runs through `make test-cluster`, which points the tests at the local cluster"
        f" (CHATD_TEST_MYSQL_URL is {MYSQL_URL})"
    )


@pytest.fixture
def record_node_loss() -> Any:
    return LOSSES.append


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not LOSSES:
        return
    write = terminalreporter.write_line
    terminalreporter.section("node loss on the cluster")
    for loss in LOSSES:
        write(
            f"node loss {loss.name}: {'survived' if loss.survived else 'FAILED'}; {loss.verdict.line()};"
            f" requests refused for {loss.refused_window:.1f} s; searches failed {loss.failed_searches}"
            f" of {loss.searches}"
        )
    survived = sum(1 for loss in LOSSES if loss.survived)
    write(f"node losses: {survived} survived, {len(LOSSES) - survived} failed")
