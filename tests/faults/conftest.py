"""Collects one line per injected fault and prints them, with a total, at the end of the run."""

from __future__ import annotations

from typing import Any

import pytest

RESULTS: list[tuple[str, bool, Any, int]] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fault injection")
    for name, survived, verdict, retried in RESULTS:
        write(
            f"fault {name}: {'survived' if survived else 'FAILED'}; messages acked {verdict.acked}, "
            f"lost {verdict.lost}, duplicated {verdict.duplicated}, double-numbered {verdict.double_numbered}, "
            f"unsearchable {verdict.unsearchable}, miscounted {verdict.miscounted}; "
            f"requests that failed and were retried {retried}"
        )
    survived = sum(1 for _, ok, _, _ in RESULTS if ok)
    total = {
        field: sum(getattr(v, field) for _, _, v, _ in RESULTS)
        for field in ("acked", "lost", "duplicated", "double_numbered")
    }
    write(
        f"faults: {survived} survived, {len(RESULTS) - survived} failed; messages acked {total['acked']}, "
        f"lost {total['lost']}, duplicated {total['duplicated']}, double-numbered {total['double_numbered']}"
    )


@pytest.fixture
def record_fault() -> Any:
    return lambda name, survived, verdict, retried: RESULTS.append((name, survived, verdict, retried))
