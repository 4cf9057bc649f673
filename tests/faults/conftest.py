"""Collects one line per injected fault and prints them, with a total, at the end of the run."""

from __future__ import annotations

from typing import Any

import pytest

RESULTS: list[tuple[str, bool, Any, int]] = []
TOTALS = ("acked", "lost", "duplicated", "double_numbered", "answers_500", "late")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fault injection")
    for name, survived, verdict, retried in RESULTS:
        write(
            f"fault {name}: {'survived' if survived else 'FAILED'}; {verdict.line()}; "
            f"requests that failed and were retried {retried}"
        )
    survived = sum(1 for _, ok, _, _ in RESULTS if ok)
    total = {field: sum(getattr(v, field) for _, _, v, _ in RESULTS) for field in TOTALS}
    write(
        f"faults: {survived} survived, {len(RESULTS) - survived} failed; messages acked {total['acked']}, "
        f"lost {total['lost']}, duplicated {total['duplicated']}, double-numbered {total['double_numbered']}, "
        f"answers 500 {total['answers_500']}, late {total['late']}"
    )


@pytest.fixture
def record_fault() -> Any:
    return lambda name, survived, verdict, retried: RESULTS.append((name, survived, verdict, retried))
