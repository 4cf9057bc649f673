"""Elasticsearch's "not now" answers become BackendUnavailable, by cause, in the search adapter.

On the test server, on an index of this test's own: the read-only block the flood-stage disk
watermark puts on an index (``index.blocks.read_only_allow_delete``, set here by hand), an
operator's write block, a server nobody listens on. Overload (429), a server not ready (503)
and a timeout are made as elasticsearch-py makes them from an answer, and passed through the
adapter's translation.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from elastic_transport import ApiResponseMeta, ConnectionTimeout, HttpHeaders, NodeConfig
from elasticsearch import ApiError, ConnectionError, NotFoundError

from chatd.backends.elasticsearch_search import ElasticsearchIndex, outage_of
from chatd.errors import BackendUnavailable
from tests.conftest import ELASTICSEARCH_URL
from tests.factories import document
from tests.servers import free_port

pytestmark = pytest.mark.real


@pytest.fixture
async def es() -> AsyncIterator[ElasticsearchIndex]:
    index = ElasticsearchIndex(ELASTICSEARCH_URL, "chatd-t-" + uuid.uuid4().hex[:12], shards=1, replicas=0)
    await index.open()
    try:
        yield index
    finally:
        await index.destroy()  # allowed under read_only_allow_delete
        await index.close()


@pytest.mark.parametrize(
    ("block", "status"), [("index.blocks.read_only_allow_delete", 429), ("index.blocks.write", 403)]
)
async def test_a_blocked_index_is_blocked_until_lifted(es: ElasticsearchIndex, block: str, status: int) -> None:
    await es.client.indices.put_settings(index=es.index_name, settings={block: True})
    try:
        with pytest.raises(BackendUnavailable) as raised:
            await es.index([document(1, 1, 1, "blocked"), document(1, 1, 2, "blocked too")])
        assert (raised.value.backend, raised.value.cause) == ("elasticsearch", "blocked")
        assert "cluster_block_exception" in str(raised.value) and str(status) in str(raised.value)
        assert (await es.search(1, 1, "blocked", 1, 10)).total == 0  # searches go on
    finally:
        await es.client.indices.put_settings(index=es.index_name, settings={block: None})
    assert await es.index([document(1, 1, 1, "unblocked")]) == []


async def test_a_server_nobody_listens_on_is_a_connection_outage() -> None:
    index = ElasticsearchIndex(f"http://127.0.0.1:{free_port()}", "chatd-t-nowhere", max_retries=0)
    with pytest.raises(BackendUnavailable) as raised:
        await index.open()
    assert (raised.value.backend, raised.value.cause) == ("elasticsearch", "connection")


def answer(status: int, error_type: str | None = None) -> ApiError:
    """The ApiError elasticsearch-py raises for an error answer with this status and error type."""
    meta = ApiResponseMeta(status, "1.1", HttpHeaders(), 0.01, NodeConfig("http", "127.0.0.1", 9200))
    body = {"error": {"type": error_type, "reason": "test"}, "status": status} if error_type else "plain text"
    kind = NotFoundError if status == 404 else ApiError
    return kind(message=error_type or "error", meta=meta, body=body)


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (answer(429, "es_rejected_execution_exception"), "overloaded"),
        (answer(429, "circuit_breaking_exception"), "overloaded"),
        (answer(503, "master_not_discovered_exception"), "unavailable"),
        (answer(503), "unavailable"),
        (answer(504), "unavailable"),
        (answer(500, "null_pointer_exception"), "server_error"),
        (answer(408), "timeout"),
        (answer(429, "cluster_block_exception"), "blocked"),  # read_only_allow_delete: the disk filled
        (answer(403, "cluster_block_exception"), "blocked"),  # index.blocks.write, read_only
        (answer(403, "security_exception"), None),
        (answer(400, "mapper_parsing_exception"), None),
        (answer(404, "index_not_found_exception"), None),
        (ConnectionTimeout("timed out"), "timeout"),
        (ConnectionError("refused"), "connection"),
        (ValueError("a bug"), None),
    ],
)
def test_errors_by_cause(error: Exception, cause: str | None) -> None:
    outage = outage_of(error, "bulk index")
    assert (outage.cause if outage else None) == cause
    if outage:
        assert outage.backend == "elasticsearch"
