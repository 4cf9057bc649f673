"""Live tests: the ``api`` fixture without the keep-alive poll.

Every keep-alive interval each followed chat re-reads the store, which would mask a broken
replay or a lost announcement within the test's timeouts; with an hour's interval, what a test
sees comes from the subscription's own replay and the announcements only (tests of the poll set
their own interval).
"""

from __future__ import annotations

import pytest

from tests.conftest import Api


@pytest.fixture
async def api(make_api) -> Api:  # type: ignore[no-untyped-def]
    return await make_api(live_keepalive_seconds=3600.0)  # type: ignore[no-any-return]
