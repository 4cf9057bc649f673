"""Message search on Elasticsearch, through the official async client (8.x).

Words are cut and lower-cased in Python with ``chatd.searching.words``, the function the
embedded index uses, and indexed as a whitespace-separated ``chat_words`` field. Elasticsearch's
standard analyzer would disagree with it on ordinary chat text ("let's", "example.com",
"3.14" stay one token; Chinese is cut into single characters), and the analyzers that
could mimic it (``pattern`` tokenizer, ``pattern_replace``) live in the analysis-common
module, which a core-only server lacks. The query then uses term-level ``prefix`` and
``fuzzy`` queries, which compare whole words exactly as ``chatd.searching.word_matches``.

Each word is indexed under its chat's key (``12:3:hello`` for chat 3 of application 12), and
queries name the key as a prefix the fuzzy automaton may not edit (``prefix_length``). A
query's terms then come from its own chat's slice of the term dictionary: a typo of a
10-letter word walks the few hundred words of one chat, not the vocabulary of every chat in
the index, and the postings it reads are that chat's. With plain words, a two-edit query
walked the whole dictionary and read every other chat's postings of its terms: at 100,000
messages it took 70-100 ms, growing with the corpus; keyed, it grows with the chat.

Per-query work is bounded by the definition itself (words cut at ``MAX_WORD_CHARS``, no
fuzzy matching past ``MAX_FUZZY_CHARS``, at most ``MAX_QUERY_WORDS`` words) and, as a last
guard, by ``search_timeout``: a search still running then is reported unavailable, never
answered with the partial result the shards had found so far.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
from elasticsearch import (
    ApiError,
    AsyncElasticsearch,
    BadRequestError,
    ConnectionTimeout,
    SerializationError,
    TransportError,
)
from elasticsearch.serializer import OrjsonSerializer

from chatd.backends.lifecycle import Lifecycle
from chatd.domain import SearchDocument, SearchHit, SearchResult
from chatd.errors import BackendUnavailable, BadRequest
from chatd.jobs import format_time, parse_time
from chatd.searching import query_terms, words
from chatd.settings import server_urls

logger = logging.getLogger(__name__)

# Indexes written before words were keyed by chat have ``words`` and lack this field.
KEYED_FIELD = "chat_words"
# The most terms of one chat a fuzzy query word expands to (see ``_word_query``).
FUZZY_TERMS = 1024
# Statuses that say "not now" rather than "never": the request or document may be retried.
_RETRYABLE = frozenset({408, 429})
# A write block (flood-stage disk watermark, an operator's maintenance block) is lifted in time.
_RETRYABLE_ITEM_ERRORS = frozenset({"cluster_block_exception"})
_HIT_FIELDS = ["message_number", "content", "created_at"]
_DOCUMENT_FIELDS = ["application_id", "chat_number", "message_number", "content", "created_at", "revision"]


def _retryable(status: int) -> bool:
    return status in _RETRYABLE or status >= 500


def _cause_of_status(status: int, error_type: str | None = None) -> str:
    """The BackendUnavailable cause of a refusal Elasticsearch will lift by itself."""
    if error_type in _RETRYABLE_ITEM_ERRORS:
        return "blocked"  # read-only after the flood-stage disk watermark (429), or an operator's block (403)
    if status == 408:
        return "timeout"
    if status == 429:
        return "overloaded"  # a full write or search thread pool queue, a circuit breaker
    return "unavailable" if status in (502, 503, 504) else "server_error"


def _error_type(exc: ApiError) -> str | None:
    """The ``error.type`` of an error answer (``cluster_block_exception``, say), if it has one."""
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    return error.get("type") if isinstance(error, dict) else None


def outage_of(exc: BaseException, action: str) -> BackendUnavailable | None:
    """The BackendUnavailable an elasticsearch-py error means, or None for an error in the request."""
    if isinstance(exc, SerializationError):
        return None
    if isinstance(exc, TransportError):  # connection refused or lost, timeout, TLS
        cause = "timeout" if isinstance(exc, ConnectionTimeout) else "connection"
        return BackendUnavailable(f"elasticsearch {action}: {exc}", backend="elasticsearch", cause=cause)
    if isinstance(exc, ApiError):
        error_type = _error_type(exc)
        if not (_retryable(exc.meta.status) or error_type in _RETRYABLE_ITEM_ERRORS):
            return None
        return BackendUnavailable(
            f"elasticsearch {action}: HTTP {exc.meta.status} {exc.message}",
            backend="elasticsearch",
            cause=_cause_of_status(exc.meta.status, error_type),
        )
    return None


@contextmanager
def _outage(action: str) -> Iterator[None]:
    """Turn "the server cannot answer now" into BackendUnavailable; let data errors through."""
    try:
        yield
    except (TransportError, ApiError) as exc:
        if (outage := outage_of(exc, action)) is not None:
            raise outage from exc
        raise


class SearchRejected(Exception):
    """Elasticsearch refused documents for a reason that retrying will not fix (a mapping error).

    Raised rather than returned: the indexer then retries the batch job by job, and the job that
    keeps failing reaches the dead-letter queue after ``max_attempts`` deliveries, where an
    operator can see it. Returned documents are retried without an attempt limit.
    """

    def __init__(self, reasons: dict[str, str]):
        super().__init__(f"{len(reasons)} documents rejected: {reasons}")
        self.reasons = reasons


class ElasticsearchIndex(Lifecycle):
    """Messages in one Elasticsearch index, routed by chat so a search reads a single shard.

    ``shards`` and ``replicas`` apply when ``open()`` creates the index. The defaults suit a
    production cluster: 3 primaries leave room to grow and to spread chats over nodes;
    ``replicas=None`` means ``auto_expand_replicas: 0-1``, one copy of every shard once a
    second node exists, and a green single-node (development) cluster meanwhile. Pass a
    number to pin the replica count. Searches cannot page past ``max_result_window`` hits
    (Elasticsearch's from/size limit): deeper pages raise BadRequest.
    """

    name = "elasticsearch"

    def __init__(
        self,
        url: str,
        index: str = "messages",
        *,
        shards: int = 3,
        replicas: int | None = None,
        max_result_window: int = 10_000,
        request_timeout: float = 10.0,
        ping_timeout: float = 2.0,
        max_retries: int = 2,
        search_timeout: float = 5.0,
    ):
        self.url = url
        self.index_name = index
        self.shards = shards
        self.replicas = replicas
        self.max_result_window = max_result_window
        self.request_timeout = request_timeout
        self.ping_timeout = ping_timeout
        self.max_retries = max_retries
        self.search_timeout = search_timeout
        self._client: AsyncElasticsearch | None = None

    @property
    def client(self) -> AsyncElasticsearch:
        if self._client is None:
            raise RuntimeError("ElasticsearchIndex is not open")
        return self._client

    async def open(self) -> None:
        # Created here, not in __init__: the client's HTTP session belongs to the running loop.
        # A timeout is reported, not repeated: the request may be slow rather than lost, and
        # the caller (a client, the indexer) retries anyway; so a request waits one timeout at most.
        # Opening again (after ``destroy``, say) keeps the client and makes the index again.
        if self._client is None:
            self._client = AsyncElasticsearch(
                # A comma-separated list of node URLs is a host list: the client spreads
                # requests over the nodes and retries a request on the next one when a node
                # does not answer (it is then left out for a while).
                server_urls(self.url),
                request_timeout=self.request_timeout,
                max_retries=self.max_retries,
                retry_on_timeout=False,
                # orjson for request and response bodies: the standard library's json was a fifth
                # of a rebuild's CPU (py-spy).
                serializer=OrjsonSerializer(),
            )
        try:
            await self._create_index()
        except BaseException:
            await self.close()
            raise

    async def _create_index(self) -> None:
        with _outage("create index"):
            try:
                await self.client.indices.create(index=self.index_name, settings=self._settings(), mappings=_MAPPINGS)
                return
            except BadRequestError as exc:
                # Another process (or an earlier run) created it first.
                if exc.error != "resource_already_exists_exception":
                    raise
            await self._add_keyed_field()

    async def _add_keyed_field(self) -> None:
        """Give an index written before words were keyed by chat the keyed field.

        Its documents have no keyed words, so searches miss them until ``chatd reindex``
        writes them again: said once, loudly, at start.
        """
        mapping = await self.client.indices.get_mapping(index=self.index_name)
        properties = next(iter(mapping.values()))["mappings"].get("properties", {})
        if KEYED_FIELD in properties:
            return
        await self.client.indices.put_mapping(
            index=self.index_name, properties={KEYED_FIELD: _MAPPINGS["properties"][KEYED_FIELD]}
        )
        logger.warning(
            "elasticsearch index %s was written before words were keyed by chat: its messages are not"
            " searchable until `chatd reindex` rebuilds it",
            self.index_name,
        )

    def _settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {"number_of_shards": self.shards, "max_result_window": self.max_result_window}
        if self.replicas is None:
            settings["auto_expand_replicas"] = "0-1"
        else:
            settings["number_of_replicas"] = self.replicas
        return settings

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def ping(self) -> None:
        # The server gives up (status red, 408) before the client does: a missing index
        # reads as "red", not as a timeout.
        with _outage("ping"):
            health = await self.client.options(request_timeout=self.ping_timeout).cluster.health(
                index=self.index_name, timeout=f"{int(self.ping_timeout * 500)}ms"
            )
        if health["status"] == "red":
            raise BackendUnavailable(
                f"elasticsearch index {self.index_name} is red", backend="elasticsearch", cause="index_red"
            )

    async def destroy(self) -> None:
        """Delete the index and everything in it."""
        with _outage("delete index"):
            await self.client.options(ignore_status=404).indices.delete(index=self.index_name)

    async def refresh(self) -> None:
        with _outage("refresh"):
            await self.client.indices.refresh(index=self.index_name)

    async def documents_after(self, after: tuple[int, int, int] | None, limit: int) -> list[SearchDocument]:
        keyset: dict[str, Any] = {} if after is None else {"search_after": list(after)}
        with _outage("scan"):
            response = await self.client.options(ignore_status=404).search(
                index=self.index_name,
                query={"match_all": {}},
                sort=[{"application_id": "asc"}, {"chat_number": "asc"}, {"message_number": "asc"}],
                size=limit,
                **keyset,
                source_includes=_DOCUMENT_FIELDS,
                allow_partial_search_results=False,
            )
        if "hits" not in response:  # no index (404): nothing survived
            return []
        return [
            SearchDocument(
                source["application_id"],
                source["chat_number"],
                source["message_number"],
                source["content"],
                parse_time(source["created_at"]),
                source["revision"],
            )
            for source in (hit["_source"] for hit in response["hits"]["hits"])
        ]

    async def index(self, documents: Sequence[SearchDocument]) -> list[SearchDocument]:
        """Bulk-write ``documents``; a stored revision is only ever replaced by one at least as new.

        Returns the documents that failed for a passing reason (overload, a shard not ready).
        Raises BackendUnavailable if all of them did, and SearchRejected for documents that
        can never be stored.
        """
        if not documents:
            return []
        # Each line encoded here with orjson; the client passes bytes lines through as they are.
        lines: list[bytes] = []
        for doc in documents:
            action = {
                "_index": self.index_name,
                "_id": doc.doc_id,
                "routing": doc.routing,
                "version": doc.revision,
                "version_type": "external_gte",
            }
            lines.append(orjson.dumps({"index": action}))
            lines.append(orjson.dumps(_source(doc)))
        with _outage("bulk index"):
            response = await self.client.bulk(operations=lines)  # type: ignore[arg-type]
        if not response["errors"]:
            return []
        return self._failures(documents, response["items"])

    def _failures(self, documents: Sequence[SearchDocument], items: list[dict[str, Any]]) -> list[SearchDocument]:
        retry: list[SearchDocument] = []
        rejected: dict[str, str] = {}
        for doc, item in zip(documents, items, strict=True):
            result = item["index"]
            status = result["status"]
            if status < 300 or status == 409:
                continue  # 409: a newer revision is indexed already (external_gte), which is success
            error_type = result["error"].get("type")
            reason = f"{status} {error_type}: {result['error'].get('reason')}"
            if _retryable(status) or error_type in _RETRYABLE_ITEM_ERRORS:
                retry.append(doc)
            else:
                rejected[doc.doc_id] = reason
                logger.error("elasticsearch refused document %s: %s", doc.doc_id, reason)
        if rejected:
            raise SearchRejected(rejected)
        if len(retry) == len(documents):
            first = items[0]["index"]
            raise BackendUnavailable(
                f"elasticsearch refused all {len(documents)} documents, e.g. HTTP {first['status']} {first['error']}",
                backend="elasticsearch",
                cause=_cause_of_status(first["status"], first["error"].get("type")),
            )
        logger.warning("elasticsearch: %d of %d documents to retry", len(retry), len(documents))
        return retry

    async def search(self, application_id: int, chat_number: int, query: str, page: int, per_page: int) -> SearchResult:
        wanted = query_terms(query)
        if not wanted:
            return SearchResult(0, [])
        routing = f"{application_id}:{chat_number}"
        criteria = _query(application_id, chat_number, wanted)
        start, size = (page - 1) * per_page, per_page
        if start + size > self.max_result_window:
            # Elasticsearch refuses windows past max_result_window; the page may still be reachable
            # (a short last page) or be past the end (empty, as in every backend).
            total = (await self._search(routing, criteria, 0, 0)).total
            if start >= total:
                return SearchResult(total, [])
            if min(start + size, total) > self.max_result_window:
                raise BadRequest(
                    f"page too deep: search results stop after the first {self.max_result_window}"
                    " matches; narrow the query",
                    code="page_too_deep",
                )
            size = total - start
        return await self._search(routing, criteria, start, size)

    async def search_after(
        self, application_id: int, chat_number: int, query: str, after: int, limit: int
    ) -> SearchResult:
        wanted = query_terms(query)
        if not wanted:
            return SearchResult(0, [])
        # search_after on the sort key, with from 0: the window limit counts from + size, so any
        # depth is reachable; and the total still counts every match, not only those past ``after``.
        criteria = _query(application_id, chat_number, wanted)
        return await self._search(f"{application_id}:{chat_number}", criteria, 0, limit, after)

    async def _search(
        self, routing: str, criteria: dict[str, Any], start: int, size: int, after: int | None = None
    ) -> SearchResult:
        keyset: dict[str, Any] = {} if after is None else {"search_after": [after]}
        with _outage("search"):
            response = await self.client.search(
                index=self.index_name,
                routing=routing,
                query=criteria,
                sort=[{"message_number": "asc"}],
                from_=start,
                size=size,
                **keyset,
                track_total_hits=True,
                source_includes=_HIT_FIELDS,
                # A total from some shards only would be a wrong answer: fail instead.
                allow_partial_search_results=False,
                # Shards stop collecting at the timeout, so a runaway query frees the search threads.
                timeout=f"{int(self.search_timeout * 1000)}ms",
            )
        if response.get("timed_out"):
            raise BackendUnavailable(
                f"elasticsearch search: took longer than {self.search_timeout} s",
                backend="elasticsearch",
                cause="timeout",
            )
        hits = [
            SearchHit(
                hit["_source"]["message_number"], hit["_source"]["content"], parse_time(hit["_source"]["created_at"])
            )
            for hit in response["hits"]["hits"]
        ]
        return SearchResult(response["hits"]["total"]["value"], hits)


_MAPPINGS: dict[str, Any] = {
    "dynamic": "strict",
    # ``chat_words`` is derived from ``content``; keeping it out of _source halves what is stored.
    "_source": {"excludes": [KEYED_FIELD]},
    "properties": {
        "application_id": {"type": "long"},
        "chat_number": {"type": "integer"},
        "message_number": {"type": "long"},
        # Returned with hits, never searched: ``chat_words`` is what queries read.
        "content": {"type": "text", "index": False},
        # The message's distinct lower-cased words, each after its chat's key: one term per
        # value, as cut by ``words`` (a whitespace analyzer would split a key and a 255-character
        # word in two). Only term-level queries read them: no doc values.
        KEYED_FIELD: {"type": "keyword", "doc_values": False},
        "created_at": {"type": "date"},
        "revision": {"type": "long"},
    },
}


def _source(doc: SearchDocument) -> dict[str, Any]:
    key = _chat_key(doc.application_id, doc.chat_number)
    return {
        "application_id": doc.application_id,
        "chat_number": doc.chat_number,
        "message_number": doc.message_number,
        "content": doc.content,
        # Each distinct word once: only whether a message has a word matters.
        KEYED_FIELD: [key + word for word in dict.fromkeys(words(doc.content))],
        "created_at": format_time(doc.created_at),
        "revision": doc.revision,
    }


def _chat_key(application_id: int, chat_number: int) -> str:
    # Words are \w+, so they never contain the colon: no word of one chat reads as another's.
    return f"{application_id}:{chat_number}:"


def _word_query(key: str, word: str, edits: int) -> dict[str, Any]:
    """``word`` as a prefix of one of the chat's words, or within ``edits`` of one."""
    clauses: list[dict[str, Any]] = [{"prefix": {KEYED_FIELD: {"value": key + word, "rewrite": "constant_score"}}}]
    if edits:
        # The key is the part the automaton may not edit, so the terms come from this chat
        # alone. A top-terms rewrite builds the automaton once per query; constant_score
        # built it again in every segment (measured: 9 ms against 1.5 ms for a two-edit word
        # over 9 segments) and the cost grew with the segments, not the chat. It keeps the
        # FUZZY_TERMS closest terms of this chat, far more than any one chat has within two
        # edits of a word; and unlike constant_score_boolean it never fails past the clause limit.
        clauses.append(
            {
                "fuzzy": {
                    KEYED_FIELD: {
                        "value": key + word,
                        "fuzziness": edits,
                        "transpositions": True,
                        "prefix_length": len(key),
                        "rewrite": f"top_terms_{FUZZY_TERMS}",
                    }
                }
            }
        )
    return {"bool": {"should": clauses, "minimum_should_match": 1}}


def _query(application_id: int, chat_number: int, wanted: list[tuple[str, int]]) -> dict[str, Any]:
    # Filter context throughout: hits are ordered by number, so scores would be wasted work.
    return {
        "bool": {
            "filter": [
                {"term": {"application_id": application_id}},
                {"term": {"chat_number": chat_number}},
                *(_word_query(_chat_key(application_id, chat_number), word, edits) for word, edits in wanted),
            ]
        }
    }
